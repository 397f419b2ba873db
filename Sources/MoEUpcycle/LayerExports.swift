import MoESupport
import MoEFormats
import MoERuntime
import MoELayer
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoEKernelCode

// Handles: a retained Swift object behind each opaque C pointer.

func retainedHandle(_ object: AnyObject) -> OpaquePointer {
  OpaquePointer(Unmanaged.passRetained(object).toOpaque())
}

func handleObject<T: AnyObject>(_ p: OpaquePointer?, _ type: T.Type, _ name: String) throws -> T {
  guard let p else { throw MoEError(.nullPointer, "\(name) is NULL") }
  return Unmanaged<T>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

func releaseHandle<T: AnyObject>(_ p: OpaquePointer?, _ type: T.Type) {
  guard let p else { return }
  Unmanaged<T>.fromOpaque(UnsafeRawPointer(p)).release()
}

// MARK: - Runtime

@c @implementation
public func moe_runtime_params_init(_ params: UnsafeMutablePointer<moe_runtime_params>!, _ struct_size: Int) -> moe_status {
  initParameters(params, struct_size, "moe_runtime_params_init")
}

/// A placement field: nil for MOE_PLACEMENT_DEFAULT.
func placementArgument(_ p: moe_placement, _ field: String) throws -> PlacementPolicy? {
  if p == MOE_PLACEMENT_DEFAULT { return nil }
  return try coreEnum(p, PlacementPolicy.self, field)
}

@c @implementation
public func moe_runtime_create(_ out: UnsafeMutablePointer<OpaquePointer?>!,
                               _ params: UnsafePointer<moe_runtime_params>!) -> moe_status {
  guarded("moe_runtime_create") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let p = try readParameters(params, "params")
    let placement = try placementArgument(p.placement, "params->placement") ?? .rowSlice
    guard p.threads <= 4096 else { throw MoEError.invalid("params->threads is \(p.threads); use 0 (one per core) or 1...4096") }
    var source = TopologySource.system
    if p.topology_synthetic != nil && p.topology_xml != nil {
      throw MoEError.invalid("params->topology_synthetic and params->topology_xml are both set; set at most one")
    }
    if let s = p.topology_synthetic { source = .synthetic(try stringArgument(s, "params->topology_synthetic")) }
    if let x = p.topology_xml { source = .xml(path: try stringArgument(x, "params->topology_xml")) }
    let runtime = try Runtime(threads: Int(p.threads), source: source, pin: p.pin != 0, placement: placement)
    out.pointee = retainedHandle(runtime)
  }
}

@c @implementation
public func moe_runtime_free(_ runtime: OpaquePointer?) {
  releaseHandle(runtime, Runtime.self)
}

@c @implementation
public func moe_runtime_get_info(_ out: UnsafeMutablePointer<moe_runtime_info>!,
                                 _ runtime: OpaquePointer?) -> moe_status {
  guarded("moe_runtime_get_info") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    var info = moe_runtime_info()
    info.numa_nodes = UInt32(rt.topology.nodes.count)
    info.cores = UInt32(rt.topology.coreCount)
    info.pus = UInt32(rt.topology.puCount)
    info.workers = UInt32(rt.workerCount)
    info.is_this_system = rt.topology.support.isThisSystem ? 1 : 0
    info.workers_pinned = rt.workersPinned ? 1 : 0
    info.memory_binding = rt.topology.support.canBindMemory ? 1 : 0
    info.blas_threads = Int32(BLAS.threads)
    copyText(BLAS.coreName, into: &info.blas_core)
    copyText(Kernels.active.path.rawValue, into: &info.kernel_path)
    info.kernel_forced = Kernels.active.forced ? 1 : 0
    info.kernel_vector_floats = Int32(Kernels.active.path.vectorFloats)
    copyText(Kernels.bf16Kernels().rawValue, into: &info.kernel_bf16)
    try writeResult(info, to: out, "out")
  }
}

@c @implementation
public func moe_runtime_measure_peak(_ runtime: OpaquePointer?, _ dtype: moe_dtype, _ seconds: Double,
                                     _ gflops: UnsafeMutablePointer<Double>!) -> moe_status {
  guarded("moe_runtime_measure_peak") {
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    guard let gflops else { throw MoEError(.nullPointer, "gflops is NULL") }
    guard seconds.isFinite, seconds >= 0.01, seconds <= 10 else {
      throw MoEError.invalid("seconds is \(seconds); it must be in 0.01...10")
    }
    switch dtype {
    case MOE_DTYPE_F32: gflops.pointee = rt.measureFMAPeak(seconds: seconds)
    case MOE_DTYPE_BF16:
      guard let peak = rt.measureBF16Peak(seconds: seconds) else {
        throw MoEError.unsupported("dtype bf16: this CPU (or its OS) does not support AVX512-BF16 or AMX-BF16; bf16 compute runs on the f32 kernels (rounded operands), whose peak is MOE_DTYPE_F32's")
      }
      gflops.pointee = peak
    default: throw MoEError.invalid("dtype has invalid value \(dtype.rawValue); use MOE_DTYPE_F32 or MOE_DTYPE_BF16")
    }
  }
}

@c @implementation
public func moe_runtime_describe(_ runtime: OpaquePointer?, _ layer: UnsafePointer<moe_layer_config>!,
                                 _ format: moe_text_format, _ buffer: UnsafeMutablePointer<CChar>!,
                                 _ capacity: Int, _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_runtime_describe") {
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    var config: MoELayerConfig? = nil
    if let layer { config = try layerConfig(try readParameters(layer, "layer"), name: "layer") }
    let text: String
    switch format {
    case MOE_TEXT_PLAIN: text = try rt.describe(layer: config, json: false)
    case MOE_TEXT_JSON: text = try rt.describe(layer: config, json: true)
    default: throw MoEError.invalid("format has invalid value \(format.rawValue)")
    }
    try writeText(text, buffer, capacity, needed)
  }
}

// MARK: - Layer configuration

@c @implementation
public func moe_layer_config_init(_ config: UnsafeMutablePointer<moe_layer_config>!, _ struct_size: Int) -> moe_status {
  initParameters(config, struct_size, "moe_layer_config_init")
}

/// Translates and validates a C layer configuration (read with readParameters).
func layerConfig(_ c: moe_layer_config, name: String) throws -> MoELayerConfig {
  var m = MoELayerConfig(hidden: Int(c.hidden_size), ffn: Int(c.moe_intermediate_size), experts: Int(c.num_experts),
                         topK: Int(c.top_k))
  try applyBehaviour(c, to: &m, name: name)
  try m.validate()
  return m
}

/// The non-shape fields of a C configuration (shared by create and load).
func applyBehaviour(_ c: moe_layer_config, to m: inout MoELayerConfig, name: String, includeRouting: Bool = true) throws {
  if includeRouting {
    m.routing = try coreEnum(c.routing, RoutingMode.self, "\(name)->routing")
    m.sharedFFN = Int(c.shared_expert_intermediate_size)
  }
  m.capacityFactor = c.capacity_factor
  m.expertChoice = c.expert_choice != 0
  guard let storage = DType(rawValue: c.storage.rawValue), storage != .f16 else {
    throw MoEError.unsupported("\(name)->storage must be MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, "
                               + "MOE_DTYPE_Q4_0 or MOE_DTYPE_Q4_1 (got \(c.storage.rawValue))")
  }
  m.storage = storage
  switch c.compute {
  case MOE_DTYPE_F32: m.compute = .f32
  case MOE_DTYPE_BF16: m.compute = .bf16
  default: throw MoEError.unsupported("\(name)->compute must be MOE_DTYPE_F32 or MOE_DTYPE_BF16 (got \(c.compute.rawValue))")
  }
  m.placement = try placementArgument(c.placement, "\(name)->placement")
  m.jitter = c.jitter
  m.seed = c.seed
  m.balanceCoef = c.aux_loss_coef
  m.zCoef = c.z_loss_coef
}

// MARK: - Layer lifecycle

@c @implementation
public func moe_layer_create(_ out: UnsafeMutablePointer<OpaquePointer?>!, _ runtime: OpaquePointer?,
                             _ config: UnsafePointer<moe_layer_config>!) -> moe_status {
  guarded("moe_layer_create") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    guard let config else { throw MoEError(.nullPointer, "config is NULL") }
    let layer = try MoELayer(config: try layerConfig(try readParameters(config, "config"), name: "config"), runtime: rt)
    out.pointee = retainedHandle(layer)
  }
}

@c @implementation
public func moe_layer_load(_ out: UnsafeMutablePointer<OpaquePointer?>!, _ runtime: OpaquePointer?,
                           _ checkpoint_path: UnsafePointer<CChar>!, _ layer_index: UInt32,
                           _ overrides: UnsafePointer<moe_layer_config>!) -> moe_status {
  guarded("moe_layer_load") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    let path = try stringArgument(checkpoint_path, "checkpoint_path")
    var adjust: ((inout MoELayerConfig) throws -> Void)? = nil
    if let overrides {
      let c = try readParameters(overrides, "overrides")
      adjust = { m in try applyBehaviour(c, to: &m, name: "overrides", includeRouting: false) }
    }
    let layer = try MoELayer.load(checkpoint: path, layer: Int(layer_index), runtime: rt, adjust: adjust)
    out.pointee = retainedHandle(layer)
  }
}

@c @implementation
public func moe_layer_free(_ layer: OpaquePointer?) {
  releaseHandle(layer, MoELayer.self)
}

@c @implementation
public func moe_layer_get_config(_ out: UnsafeMutablePointer<moe_layer_config>!, _ layer: OpaquePointer?) -> moe_status {
  guarded("moe_layer_get_config") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    let l = try handleObject(layer, MoELayer.self, "layer")
    let m = l.config
    var c = moe_layer_config()
    c.hidden_size = UInt32(m.hidden)
    c.moe_intermediate_size = UInt32(m.ffn)
    c.num_experts = UInt32(m.experts)
    c.top_k = UInt32(m.topK)
    c.routing = moe_routing(rawValue: UInt32(m.routing.rawValue))
    c.capacity_factor = m.capacityFactor
    c.expert_choice = m.expertChoice ? 1 : 0
    c.shared_expert_intermediate_size = UInt32(m.sharedFFN)
    c.storage = moe_dtype(rawValue: m.storage.rawValue)
    c.compute = m.compute == .bf16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32
    c.placement = moe_placement(rawValue: l.plan.policy.rawValue)
    c.jitter = m.jitter
    c.seed = m.seed
    c.aux_loss_coef = m.balanceCoef
    c.z_loss_coef = m.zCoef
    try writeResult(c, to: out, "out")
  }
}

// MARK: - Weights

func weightKind(_ w: moe_weight) throws -> LayerWeight {
  guard let k = LayerWeight(rawValue: Int32(bitPattern: w.rawValue)) else {
    throw MoEError.invalid("weight has invalid value \(w.rawValue)")
  }
  return k
}

func expertIndex(_ e: Int64) throws -> Int {
  guard e >= Int64(MOE_ALL_EXPERTS), e <= Int64(Int32.max) else {
    throw MoEError.invalid("expert is \(e); use MOE_ALL_EXPERTS (-1) or an expert index")
  }
  return Int(e)
}

@c @implementation
public func moe_layer_weight_count(_ out: UnsafeMutablePointer<Int>!, _ layer: OpaquePointer?,
                                   _ weight: moe_weight, _ expert: Int64) -> moe_status {
  guarded("moe_layer_weight_count") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    let l = try handleObject(layer, MoELayer.self, "layer")
    out.pointee = try l.elementCount(of: try weightKind(weight), expert: try expertIndex(expert))
  }
}

@c @implementation
public func moe_layer_set_weight(_ layer: OpaquePointer?, _ weight: moe_weight, _ expert: Int64,
                                 _ data: UnsafePointer<Float>!, _ count: Int) -> moe_status {
  guarded("moe_layer_set_weight") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    guard let data else { throw MoEError(.nullPointer, "data is NULL") }
    try l.setWeight(try weightKind(weight), expert: try expertIndex(expert), data: data, count: count)
  }
}

@c @implementation
public func moe_layer_get_weight(_ layer: OpaquePointer?, _ weight: moe_weight, _ expert: Int64,
                                 _ out: UnsafeMutablePointer<Float>!, _ capacity: Int,
                                 _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_layer_get_weight") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    let kind = try weightKind(weight), e = try expertIndex(expert)
    let count = try l.elementCount(of: kind, expert: e)
    guard let dst = try outputBuffer(out, capacity: capacity, needed: needed, count: count, "out", unit: "floats") else { return }
    try l.getWeight(kind, expert: e, out: dst, count: count)
  }
}

@c @implementation
public func moe_layer_borrow_experts(_ layer: OpaquePointer?, _ dtype: moe_dtype, _ gate: UnsafeRawPointer!,
                                     _ up: UnsafeRawPointer!, _ down: UnsafeRawPointer!) -> moe_status {
  guarded("moe_layer_borrow_experts") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    guard let gate else { throw MoEError(.nullPointer, "gate is NULL") }
    guard let up else { throw MoEError(.nullPointer, "up is NULL") }
    guard let down else { throw MoEError(.nullPointer, "down is NULL") }
    guard let d = DType(rawValue: dtype.rawValue) else {
      throw MoEError.invalid("dtype has invalid value \(dtype.rawValue)")
    }
    try l.borrowExperts(gate: gate, up: up, down: down, dtype: d)
  }
}

@c @implementation
public func moe_layer_init_random(_ layer: OpaquePointer?, _ seed: UInt64, _ std: Float) -> moe_status {
  guarded("moe_layer_init_random") {
    try handleObject(layer, MoELayer.self, "layer").initializeRandom(seed: seed, std: std)
  }
}

// MARK: - Compute

@c @implementation
public func moe_layer_forward(_ layer: OpaquePointer?, _ x: UnsafePointer<Float>!, _ tokens: Int,
                              _ out: UnsafeMutablePointer<Float>!, _ flags: UInt32) -> moe_status {
  guarded("moe_layer_forward") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    guard flags & ~(MOE_FORWARD_SAVE | MOE_FORWARD_TRAIN) == 0 else {
      throw MoEError.invalid("flags has unknown bits 0x\(String(flags, radix: 16))")
    }
    guard tokens >= 0, tokens <= MoELayer.maxTokens else {
      throw MoEError.invalid("tokens is \(tokens); it must be at most \(MoELayer.maxTokens)")
    }
    // With no tokens, x and out may be NULL.
    var dummy: Float = 0
    try withUnsafeMutablePointer(to: &dummy) { d in
      let xp = x ?? UnsafePointer(d), op = out ?? d
      if tokens > 0 {
        guard x != nil else { throw MoEError(.nullPointer, "x is NULL") }
        guard out != nil else { throw MoEError(.nullPointer, "out is NULL") }
        let bytes = tokens * l.config.hidden * 4
        let xs = UInt(bitPattern: xp), os = UInt(bitPattern: op)
        guard xs + UInt(bytes) <= os || os + UInt(bytes) <= xs else {
          throw MoEError.invalid("x and out overlap; pass separate buffers")
        }
      }
      try l.forward(x: xp, tokens: tokens, out: op, save: flags & MOE_FORWARD_SAVE != 0,
                    training: flags & MOE_FORWARD_TRAIN != 0)
    }
  }
}

@c @implementation
public func moe_layer_backward(_ layer: OpaquePointer?, _ grad_out: UnsafePointer<Float>!,
                               _ grad_x: UnsafeMutablePointer<Float>!) -> moe_status {
  guarded("moe_layer_backward") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    let tokens = l.savedTokens ?? 0
    var dummy: Float = 0
    try withUnsafeMutablePointer(to: &dummy) { d in
      if tokens > 0 {
        guard grad_out != nil else { throw MoEError(.nullPointer, "grad_out is NULL") }
        guard grad_x != nil else { throw MoEError(.nullPointer, "grad_x is NULL") }
      }
      try l.backward(gradOut: grad_out ?? UnsafePointer(d), gradX: grad_x ?? d)
    }
  }
}

@c @implementation
public func moe_layer_get_grad(_ layer: OpaquePointer?, _ weight: moe_weight, _ expert: Int64,
                               _ out: UnsafeMutablePointer<Float>!, _ capacity: Int,
                               _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_layer_get_grad") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    let kind = try weightKind(weight), e = try expertIndex(expert)
    let count = try l.elementCount(of: kind, expert: e)
    guard let dst = try outputBuffer(out, capacity: capacity, needed: needed, count: count, "out", unit: "floats") else { return }
    try l.getGradient(kind, expert: e, out: dst, count: count)
  }
}

@c @implementation
public func moe_layer_zero_grad(_ layer: OpaquePointer?) -> moe_status {
  guarded("moe_layer_zero_grad") {
    try handleObject(layer, MoELayer.self, "layer").zeroGradients()
  }
}

@c @implementation
public func moe_layer_set_noise_step(_ layer: OpaquePointer?, _ step: UInt64) -> moe_status {
  guarded("moe_layer_set_noise_step") {
    try handleObject(layer, MoELayer.self, "layer").noiseStep = step
  }
}

@c @implementation
public func moe_layer_get_stats(_ out: UnsafeMutablePointer<moe_layer_stats>!, _ layer: OpaquePointer?,
                                _ tokens_per_expert: UnsafeMutablePointer<UInt64>!, _ capacity: Int,
                                _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_layer_get_stats") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkResult(out, "out")
    let l = try handleObject(layer, MoELayer.self, "layer")
    let s = l.stats
    // E counts, zeros before the first forward.
    let experts = l.config.experts
    let counts = try outputBuffer(tokens_per_expert, capacity: capacity, needed: needed,
                                  count: experts, "tokens_per_expert", unit: "counts")
    var r = moe_layer_stats()
    r.tokens = UInt64(s.tokens)
    r.assignments = UInt64(s.rows)
    r.dropped = UInt64(s.dropped)
    r.aux_loss = Double(s.losses.balance)
    r.z_loss = Double(s.losses.z)
    r.weight_bytes = UInt64(l.ownedBytes)
    r.bound_bytes = UInt64(l.boundBytes)
    try writeResult(r, to: out, "out")
    if let counts {
      for e in 0..<experts { counts[e] = e < s.tokensPerExpert.count ? UInt64(s.tokensPerExpert[e]) : 0 }
    }
  }
}

@c @implementation
public func moe_layer_get_routing(_ layer: OpaquePointer?, _ out: UnsafeMutablePointer<Float>!, _ capacity: Int,
                                  _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_layer_get_routing") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    try writeValues(l.denseRoutingWeights(), out, capacity, needed, "out", unit: "floats (T * E)")
  }
}
