import MoESupport
import MoEFormats
import MoERuntime
import MoEModel
import MoEUpcycling
import MoEScaling
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle

/// One enum's names as the ABI gives them: the C value of each canonical name
/// (from the core's `NamedCase` tables), as static C strings made once.
struct NameTable: @unchecked Sendable {
  /// What the enum is, for messages ("method").
  let what: String
  private let entries: [(value: Int32, name: String, text: UnsafePointer<CChar>)]
  /// Other spellings accepted by `value(named:)`.
  private let aliases: [(name: String, value: Int32)]

  init(_ what: String, _ names: [(Int32, String)], aliases: [(String, Int32)] = []) {
    self.what = what
    // Made once per process and never freed: moe_<enum>_name returns static text.
    entries = names.map { (value: $0.0, name: $0.1, text: UnsafePointer(strdup($0.1)!)) }
    self.aliases = aliases
  }

  init<E: NamedCase>(_ what: String, _ type: E.Type, extra: [(Int32, String)] = [], aliases: [(String, Int32)] = []) {
    self.init(what, extra + E.allCases.map { ($0.rawValue, $0.caseName) }, aliases: aliases)
  }

  func text(of value: Int32) -> UnsafePointer<CChar>? {
    entries.first { $0.value == value }?.text
  }

  func value(named name: String) throws -> Int32 {
    let key = normalizedCaseName(name)
    if let e = entries.first(where: { normalizedCaseName($0.name) == key }) { return e.value }
    if let a = aliases.first(where: { normalizedCaseName($0.name) == key }) { return a.value }
    let valid = entries.sorted { $0.value < $1.value }.map(\.name).joined(separator: ", ")
    throw MoEError.invalid("'\(name)' is not a \(what); use one of: \(valid)")
  }
}

/// Every enum of the header with its names.
enum Names {
  static let dtype = NameTable("dtype", DType.self, extra: [(MOE_DTYPE_DEFAULT.rawValue, "default")],
                               aliases: [("keep", MOE_DTYPE_DEFAULT.rawValue), ("auto", MOE_DTYPE_DEFAULT.rawValue)])
  static let method = NameTable("method", UpcycleOptions.Method.self)
  static let routerInit = NameTable("router init", UpcycleOptions.RouterInit.self)
  static let routing = NameTable("routing", RoutingMode.self)
  static let format = NameTable("format", UpcycleOptions.Format.self)
  static let partitionSelect = NameTable("partition selection", UpcycleOptions.PartitionSelect.self)
  static let granularScaling = NameTable("granular scaling", UpcycleOptions.GranularScaling.self)
  static let importance = NameTable("importance", UpcycleOptions.Importance.self)
  static let dropSelect = NameTable("drop selection", UpcycleOptions.DropSelect.self)
  static let placement = NameTable("placement", PlacementPolicy.self,
                                   extra: [(MOE_PLACEMENT_DEFAULT.rawValue, "default")])
  static let textFormat = NameTable("text format", [(Int32(MOE_TEXT_PLAIN.rawValue), "plain"),
                                                     (Int32(MOE_TEXT_JSON.rawValue), "json")])
  static let weight = NameTable("weight", LayerWeight.self)
  static let stopReason = NameTable("stop reason", StopReason.self)
  static let trainOnly = NameTable("train-only selection", TrainOnly.self)
  static let lrSchedule = NameTable("learning-rate schedule", LRSchedule.self)
  static let nonFinite = NameTable("non-finite policy", NonFinitePolicy.self)
  static let lawForm = NameTable("law form", LawForm.self)
}

private func nameText<T: RawRepresentable>(_ table: NameTable, _ value: T) -> UnsafePointer<CChar>?
where T.RawValue: FixedWidthInteger {
  table.text(of: Int32(truncatingIfNeeded: value.rawValue))
}

private func lookup<T: RawRepresentable>(_ table: NameTable, _ out: UnsafeMutablePointer<T>?,
                                          _ name: UnsafePointer<CChar>?, _ function: StaticString) -> moe_status
where T.RawValue: FixedWidthInteger {
  guarded(function) {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    guard let name else { throw MoEError(.nullPointer, "name is NULL") }
    guard let s = String(validatingCString: name) else { throw MoEError.invalid("name is not valid UTF-8") }
    let v = try table.value(named: s)
    guard let value = T(rawValue: T.RawValue(truncatingIfNeeded: v)) else {
      throw MoEError(.internal, "\(table.what) \(v) has no C value")
    }
    out.pointee = value
  }
}

@c @implementation public func moe_dtype_name(_ value: moe_dtype) -> UnsafePointer<CChar>! { nameText(Names.dtype, value) }
@c @implementation public func moe_dtype_from_name(_ out: UnsafeMutablePointer<moe_dtype>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.dtype, out, name, "moe_dtype_from_name")
}
@c @implementation public func moe_method_name(_ value: moe_method) -> UnsafePointer<CChar>! { nameText(Names.method, value) }
@c @implementation public func moe_method_from_name(_ out: UnsafeMutablePointer<moe_method>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.method, out, name, "moe_method_from_name")
}
@c @implementation public func moe_router_init_name(_ value: moe_router_init) -> UnsafePointer<CChar>! { nameText(Names.routerInit, value) }
@c @implementation public func moe_router_init_from_name(_ out: UnsafeMutablePointer<moe_router_init>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.routerInit, out, name, "moe_router_init_from_name")
}
@c @implementation public func moe_routing_name(_ value: moe_routing) -> UnsafePointer<CChar>! { nameText(Names.routing, value) }
@c @implementation public func moe_routing_from_name(_ out: UnsafeMutablePointer<moe_routing>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.routing, out, name, "moe_routing_from_name")
}
@c @implementation public func moe_format_name(_ value: moe_format) -> UnsafePointer<CChar>! { nameText(Names.format, value) }
@c @implementation public func moe_format_from_name(_ out: UnsafeMutablePointer<moe_format>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.format, out, name, "moe_format_from_name")
}
@c @implementation public func moe_partition_select_name(_ value: moe_partition_select) -> UnsafePointer<CChar>! { nameText(Names.partitionSelect, value) }
@c @implementation public func moe_partition_select_from_name(_ out: UnsafeMutablePointer<moe_partition_select>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.partitionSelect, out, name, "moe_partition_select_from_name")
}
@c @implementation public func moe_granular_scaling_name(_ value: moe_granular_scaling) -> UnsafePointer<CChar>! { nameText(Names.granularScaling, value) }
@c @implementation public func moe_granular_scaling_from_name(_ out: UnsafeMutablePointer<moe_granular_scaling>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.granularScaling, out, name, "moe_granular_scaling_from_name")
}
@c @implementation public func moe_importance_name(_ value: moe_importance) -> UnsafePointer<CChar>! { nameText(Names.importance, value) }
@c @implementation public func moe_importance_from_name(_ out: UnsafeMutablePointer<moe_importance>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.importance, out, name, "moe_importance_from_name")
}
@c @implementation public func moe_drop_select_name(_ value: moe_drop_select) -> UnsafePointer<CChar>! { nameText(Names.dropSelect, value) }
@c @implementation public func moe_drop_select_from_name(_ out: UnsafeMutablePointer<moe_drop_select>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.dropSelect, out, name, "moe_drop_select_from_name")
}
@c @implementation public func moe_placement_name(_ value: moe_placement) -> UnsafePointer<CChar>! { nameText(Names.placement, value) }
@c @implementation public func moe_placement_from_name(_ out: UnsafeMutablePointer<moe_placement>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.placement, out, name, "moe_placement_from_name")
}
@c @implementation public func moe_text_format_name(_ value: moe_text_format) -> UnsafePointer<CChar>! { nameText(Names.textFormat, value) }
@c @implementation public func moe_text_format_from_name(_ out: UnsafeMutablePointer<moe_text_format>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.textFormat, out, name, "moe_text_format_from_name")
}
@c @implementation public func moe_weight_name(_ value: moe_weight) -> UnsafePointer<CChar>! { nameText(Names.weight, value) }
@c @implementation public func moe_weight_from_name(_ out: UnsafeMutablePointer<moe_weight>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.weight, out, name, "moe_weight_from_name")
}
@c @implementation public func moe_stop_reason_name(_ value: moe_stop_reason) -> UnsafePointer<CChar>! { nameText(Names.stopReason, value) }
@c @implementation public func moe_stop_reason_from_name(_ out: UnsafeMutablePointer<moe_stop_reason>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.stopReason, out, name, "moe_stop_reason_from_name")
}
@c @implementation public func moe_train_only_name(_ value: moe_train_only) -> UnsafePointer<CChar>! { nameText(Names.trainOnly, value) }
@c @implementation public func moe_train_only_from_name(_ out: UnsafeMutablePointer<moe_train_only>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.trainOnly, out, name, "moe_train_only_from_name")
}
@c @implementation public func moe_lr_schedule_name(_ value: moe_lr_schedule) -> UnsafePointer<CChar>! { nameText(Names.lrSchedule, value) }
@c @implementation public func moe_lr_schedule_from_name(_ out: UnsafeMutablePointer<moe_lr_schedule>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.lrSchedule, out, name, "moe_lr_schedule_from_name")
}
@c @implementation public func moe_nonfinite_name(_ value: moe_nonfinite) -> UnsafePointer<CChar>! { nameText(Names.nonFinite, value) }
@c @implementation public func moe_nonfinite_from_name(_ out: UnsafeMutablePointer<moe_nonfinite>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.nonFinite, out, name, "moe_nonfinite_from_name")
}
@c @implementation public func moe_law_form_name(_ value: moe_law_form) -> UnsafePointer<CChar>! { nameText(Names.lawForm, value) }
@c @implementation public func moe_law_form_from_name(_ out: UnsafeMutablePointer<moe_law_form>!, _ name: UnsafePointer<CChar>!) -> moe_status {
  lookup(Names.lawForm, out, name, "moe_law_form_from_name")
}
