/// An enum whose cases each have one canonical name: lower case, words joined
/// by '-'. These are the names of the C ABI's moe_<enum>_name() and
/// moe_<enum>_from_name(), and so of the command line and the bindings.
public protocol NamedCase: CaseIterable, RawRepresentable, Sendable where RawValue == Int32 {
  var caseName: String { get }
}

extension NamedCase {
  /// The case called `name`, ignoring ASCII case and reading '_' as '-'.
  public init?(caseName name: String) {
    let key = normalizedCaseName(name)
    guard let c = Self.allCases.first(where: { normalizedCaseName($0.caseName) == key }) else { return nil }
    self = c
  }

  /// Every canonical name, in raw-value order.
  public static var caseNames: [String] { allCases.sorted { $0.rawValue < $1.rawValue }.map(\.caseName) }
}

/// `name` lower-cased (ASCII) with '_' read as '-'.
public func normalizedCaseName(_ name: String) -> String {
  String(decoding: name.utf8.map { b -> UInt8 in
    if b == UInt8(ascii: "_") { return UInt8(ascii: "-") }
    if b >= 0x41 && b <= 0x5A { return b + 0x20 }
    return b
  }, as: UTF8.self)
}

// MARK: - The names

extension DType: NamedCase {
  public var caseName: String { name.lowercased() }
}

extension UpcycleOptions.Method: NamedCase {
  /// The method's name, from its implementation (Upcycle/Methods).
  public var caseName: String { rule.name }
}

extension UpcycleOptions.RouterInit: NamedCase {
  /// The initializer's name, from its implementation (Upcycle/Routers).
  public var caseName: String { rule.name }
}

extension UpcycleOptions.Importance: NamedCase {
  public var caseName: String {
    switch self {
    case .l1: return "l1"
    case .l2: return "l2"
    case .frequency: return "freq"
    }
  }
}

extension UpcycleOptions.DropSelect: NamedCase {
  public var caseName: String {
    switch self {
    case .random: return "random"
    case .leastImportant: return "least-important"
    }
  }
}

extension RoutingMode: NamedCase {
  public var caseName: String {
    switch self {
    case .softmaxTopKRenorm: return "softmax-topk-renorm"
    case .softmaxTopK: return "softmax-topk"
    case .topKSoftmax: return "topk-softmax"
    case .sigmoidTopK: return "sigmoid-topk"
    case .sigmoidTopKRenorm: return "sigmoid-topk-renorm"
    }
  }
}

extension UpcycleOptions.Format: NamedCase {
  public var caseName: String {
    switch self {
    case .mixtral: return "mixtral"
    case .qwen2Moe: return "qwen2-moe"
    }
  }
}

extension UpcycleOptions.PartitionSelect: NamedCase {
  public var caseName: String {
    switch self {
    case .random: return "random"
    case .uniform: return "uniform"
    case .importance: return "importance"
    case .activation: return "activation"
    case .cluster: return "cluster"
    }
  }
}

extension UpcycleOptions.GranularScaling: NamedCase {
  public var caseName: String {
    switch self {
    case .down: return "down"
    case .cubeRoot: return "cube-root"
    case .none: return "none"
    }
  }
}

extension PlacementPolicy: NamedCase {
  public var caseName: String { name }
}

extension LayerWeight: NamedCase {
  public var caseName: String { normalizedCaseName(name) }
}

extension StopReason: NamedCase {
  public var caseName: String {
    switch self {
    case .length: return "length"
    case .endOfSequence: return "eos"
    case .callback: return "callback"
    }
  }
}

extension TrainOnly: NamedCase {
  public var caseName: String {
    switch self {
    case .all: return "all"
    case .moe: return "moe"
    case .routers: return "routers"
    }
  }
}

extension LRSchedule: NamedCase {
  public var caseName: String {
    switch self {
    case .cosine: return "cosine"
    case .constant: return "constant"
    }
  }
}
