#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoECore

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

/// Checks a caller struct's struct_size field against ours.
func checkStructSize(_ size: Int, _ expected: Int, _ name: String) throws {
  guard size == expected else {
    throw MoEError.invalid("\(name)->struct_size is \(size), expected \(expected); initialize the struct first")
  }
}

// MARK: - Runtime

@c @implementation
public func moe_runtime_params_init(_ params: UnsafeMutablePointer<moe_runtime_params>!) {
  guard let params else { return }
  var p = moe_runtime_params()
  p.struct_size = MemoryLayout<moe_runtime_params>.size
  p.threads = 0
  p.pin = 1
  p.placement = MOE_PLACEMENT_ROW_SLICE
  p.topology_synthetic = nil
  p.topology_xml = nil
  params.pointee = p
}

@c @implementation
public func moe_runtime_create(_ out: UnsafeMutablePointer<OpaquePointer?>!,
                               _ params: UnsafePointer<moe_runtime_params>!) -> moe_status {
  guarded("moe_runtime_create") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    out.pointee = nil
    var p = moe_runtime_params()
    if let params { p = params.pointee } else { moe_runtime_params_init(&p) }
    try checkStructSize(p.struct_size, MemoryLayout<moe_runtime_params>.size, "params")
    guard let placement = PlacementPolicy(rawValue: Int32(bitPattern: p.placement.rawValue)) else {
      throw MoEError.invalid("params->placement has invalid value \(p.placement.rawValue)")
    }
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
    try checkStructSize(out.pointee.struct_size, MemoryLayout<moe_runtime_info>.size, "out")
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    var info = moe_runtime_info()
    info.struct_size = MemoryLayout<moe_runtime_info>.size
    info.numa_nodes = UInt32(rt.topology.nodes.count)
    info.cores = UInt32(rt.topology.coreCount)
    info.pus = UInt32(rt.topology.puCount)
    info.workers = UInt32(rt.workerCount)
    info.is_this_system = rt.topology.support.isThisSystem ? 1 : 0
    info.workers_pinned = rt.workersPinned ? 1 : 0
    info.memory_binding = rt.topology.support.canBindMemory ? 1 : 0
    info.blas_threads = Int32(BLAS.threads)
    copyText(BLAS.coreName, into: &info.blas_core)
    out.pointee = info
  }
}

@c @implementation
public func moe_runtime_describe(_ runtime: OpaquePointer?, _ layer: UnsafePointer<moe_layer_config>!,
                                 _ format: moe_text_format, _ buffer: UnsafeMutablePointer<CChar>!,
                                 _ capacity: Int, _ needed: UnsafeMutablePointer<Int>!) -> moe_status {
  guarded("moe_runtime_describe") {
    let rt = try handleObject(runtime, Runtime.self, "runtime")
    var config: MoELayerConfig? = nil
    if let layer { config = try layerConfig(layer.pointee, name: "layer") }
    let text: String
    switch format {
    case MOE_TEXT_PLAIN: text = try rt.describe(layer: config, json: false)
    case MOE_TEXT_JSON: text = try rt.describe(layer: config, json: true)
    default: throw MoEError.invalid("format has invalid value \(format.rawValue)")
    }
    try writeText(text, buffer, capacity, needed)
  }
}

/// Writes `text` NUL-terminated into a caller buffer, reporting the size needed.
func writeText(_ text: String, _ buffer: UnsafeMutablePointer<CChar>?, _ capacity: Int,
               _ needed: UnsafeMutablePointer<Int>?) throws {
  let bytes = Array(text.utf8)
  needed?.pointee = bytes.count + 1
  guard buffer != nil || capacity == 0 else { throw MoEError(.nullPointer, "buffer is NULL but capacity is \(capacity)") }
  guard capacity >= bytes.count + 1 else {
    throw MoEError(.bufferTooSmall, "the text needs \(bytes.count + 1) bytes but capacity is \(capacity)")
  }
  guard let buffer else { throw MoEError(.nullPointer, "buffer is NULL") }
  bytes.withUnsafeBufferPointer { src in
    UnsafeMutableRawPointer(buffer).copyMemory(from: src.baseAddress!, byteCount: bytes.count)
  }
  buffer[bytes.count] = 0
}

// MARK: - Layer configuration

@c @implementation
public func moe_layer_config_init(_ config: UnsafeMutablePointer<moe_layer_config>!) {
  guard let config else { return }
  let d = MoELayerConfig(hidden: 0, ffn: 0, experts: 0, topK: 0)
  var c = moe_layer_config()
  c.struct_size = MemoryLayout<moe_layer_config>.size
  c.routing = MOE_ROUTING_SOFTMAX_TOPK_RENORM
  c.capacity_factor = d.capacityFactor
  c.expert_choice = 0
  c.shared_ffn = 0
  c.storage = MOE_DTYPE_F32
  c.placement = -1
  c.jitter = d.jitter
  c.seed = d.seed
  c.balance_loss_coef = d.balanceCoef
  c.z_loss_coef = d.zCoef
  config.pointee = c
}

/// Translates and validates a C layer configuration.
func layerConfig(_ c: moe_layer_config, name: String) throws -> MoELayerConfig {
  try checkStructSize(c.struct_size, MemoryLayout<moe_layer_config>.size, name)
  var m = MoELayerConfig(hidden: Int(c.hidden), ffn: Int(c.ffn), experts: Int(c.experts), topK: Int(c.top_k))
  try applyBehaviour(c, to: &m, name: name)
  try m.validate()
  return m
}

/// The non-shape fields of a C configuration (shared by create and load).
func applyBehaviour(_ c: moe_layer_config, to m: inout MoELayerConfig, name: String, includeRouting: Bool = true) throws {
  if includeRouting {
    guard let mode = RoutingMode(rawValue: Int32(bitPattern: c.routing.rawValue)) else {
      throw MoEError.invalid("\(name)->routing has invalid value \(c.routing.rawValue)")
    }
    m.routing = mode
    m.sharedFFN = Int(c.shared_ffn)
  }
  m.capacityFactor = c.capacity_factor
  m.expertChoice = c.expert_choice != 0
  switch c.storage {
  case MOE_DTYPE_F32: m.storage = .f32
  case MOE_DTYPE_BF16: m.storage = .bf16
  default: throw MoEError.unsupported("\(name)->storage must be MOE_DTYPE_F32 or MOE_DTYPE_BF16 (got \(c.storage.rawValue))")
  }
  if c.placement == -1 {
    m.placement = nil
  } else {
    guard let p = PlacementPolicy(rawValue: c.placement) else {
      throw MoEError.invalid("\(name)->placement has invalid value \(c.placement); use a moe_placement or -1")
    }
    m.placement = p
  }
  m.jitter = c.jitter
  m.seed = c.seed
  m.balanceCoef = c.balance_loss_coef
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
    let layer = try MoELayer(config: try layerConfig(config.pointee, name: "config"), runtime: rt)
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
      let c = overrides.pointee
      try checkStructSize(c.struct_size, MemoryLayout<moe_layer_config>.size, "overrides")
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
    try checkStructSize(out.pointee.struct_size, MemoryLayout<moe_layer_config>.size, "out")
    let l = try handleObject(layer, MoELayer.self, "layer")
    let m = l.config
    var c = moe_layer_config()
    c.struct_size = MemoryLayout<moe_layer_config>.size
    c.hidden = UInt32(m.hidden)
    c.ffn = UInt32(m.ffn)
    c.experts = UInt32(m.experts)
    c.top_k = UInt32(m.topK)
    c.routing = moe_routing(rawValue: UInt32(m.routing.rawValue))
    c.capacity_factor = m.capacityFactor
    c.expert_choice = m.expertChoice ? 1 : 0
    c.shared_ffn = UInt32(m.sharedFFN)
    c.storage = m.storage == .bf16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32
    c.placement = l.plan.policy.rawValue
    c.jitter = m.jitter
    c.seed = m.seed
    c.balance_loss_coef = m.balanceCoef
    c.z_loss_coef = m.zCoef
    out.pointee = c
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
  guard e >= -1, e <= Int64(Int32.max) else { throw MoEError.invalid("expert is \(e); use -1 (all) or an expert index") }
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
                                 _ out: UnsafeMutablePointer<Float>!, _ capacity: Int) -> moe_status {
  guarded("moe_layer_get_weight") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try l.getWeight(try weightKind(weight), expert: try expertIndex(expert), out: out, count: capacity)
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
    guard let d = DType(rawValue: Int32(bitPattern: dtype.rawValue)) else {
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
                               _ out: UnsafeMutablePointer<Float>!, _ capacity: Int) -> moe_status {
  guarded("moe_layer_get_grad") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try l.getGradient(try weightKind(weight), expert: try expertIndex(expert), out: out, count: capacity)
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
                                _ tokens_per_expert: UnsafeMutablePointer<UInt64>!, _ capacity: Int) -> moe_status {
  guarded("moe_layer_get_stats") {
    guard let out else { throw MoEError(.nullPointer, "out is NULL") }
    try checkStructSize(out.pointee.struct_size, MemoryLayout<moe_layer_stats>.size, "out")
    let l = try handleObject(layer, MoELayer.self, "layer")
    let s = l.stats
    var r = moe_layer_stats()
    r.struct_size = MemoryLayout<moe_layer_stats>.size
    r.tokens = UInt64(s.tokens)
    r.assignments = UInt64(s.rows)
    r.dropped = UInt64(s.dropped)
    r.balance_loss = Double(s.losses.balance)
    r.z_loss = Double(s.losses.z)
    r.weight_bytes = UInt64(l.ownedBytes)
    r.bound_bytes = UInt64(l.boundBytes)
    out.pointee = r
    if let tokens_per_expert {
      for e in 0..<min(max(capacity, 0), s.tokensPerExpert.count) { tokens_per_expert[e] = UInt64(s.tokensPerExpert[e]) }
    }
  }
}

@c @implementation
public func moe_layer_get_routing(_ layer: OpaquePointer?, _ out: UnsafeMutablePointer<Float>!, _ capacity: Int) -> moe_status {
  guarded("moe_layer_get_routing") {
    let l = try handleObject(layer, MoELayer.self, "layer")
    let dense = l.denseRoutingWeights()
    guard capacity >= dense.count else {
      throw MoEError(.bufferTooSmall, "routing needs \(dense.count) floats (T * E) but capacity is \(capacity)")
    }
    guard let out else {
      if dense.isEmpty { return }
      throw MoEError(.nullPointer, "out is NULL")
    }
    for i in dense.indices { out[i] = dense[i] }
  }
}
