// One Mixture-of-Experts SwiGLU feed-forward layer: forward and backward on the
// runtime's pinned workers, expert weights placed on NUMA nodes by a static plan.
//
// Row space: routed assignments are "rows" grouped by expert (RoutingPlan);
// with a shared expert, rows R ..< R + T are every token once more, for it.
// Expert e (the shared expert is e == E) owns rows rowStart(e) ..< + n(e).

import MoESupport
import MoEFormats
import MoERuntime
#if canImport(Glibc)
import Glibc
#endif

/// Weights of one expert slice (rows `ffn` of expert `expert`), as views.
package struct SliceWeights {
  package var expert: Int
  package var ffn: Range<Int>
  package var gate: WeightMatrix   // [fn, H]
  package var up: WeightMatrix     // [fn, H]
  package var down: WeightMatrix   // [H, fn]: column f0 of row 0, leading dimension ld
}

/// Statistics of the last forward.
public struct LayerStats: Sendable, Equatable {
  public var tokens = 0
  public var rows = 0
  public var dropped = 0
  public var tokensPerExpert: [Int] = []
  public var losses = RouterLosses()
}

public final class MoELayer: @unchecked Sendable {
  public internal(set) var config: MoELayerConfig
  public let runtime: Runtime
  public let plan: PlacementPlan

  // MARK: weights
  /// [E, H] router, f32.
  package var router: AlignedBuffer
  /// [H] shared-expert gate vector, f32 (empty without a shared expert).
  package var sharedExpertGate: AlignedBuffer
  /// Per shard, per slice views; owned memory per shard.
  var shardSlices: [[SliceWeights]]
  var shardMemory: [NodeMemory]
  /// True when the routed experts' views point into caller memory.
  public private(set) var expertsBorrowed = false
  /// The owner of a checkpoint file's mapping the routed experts' views
  /// point into (kept alive here); nil when they are owned or borrowed.
  private var mappedFrom: AnyObject?
  /// True when the routed experts are read from a checkpoint file's mapping
  /// (they are copied into owned memory before they change).
  public var expertsMapped: Bool { mappedFrom != nil }
  /// Shards holding each expert, in shard order.
  let expertShards: [[Int]]
  /// Bytes of owned expert memory really bound to a node.
  public private(set) var boundBytes = 0
  public private(set) var ownedBytes = 0
  /// Bytes of expert weights read from a checkpoint file's mapping.
  public private(set) var mappedBytes = 0

  // MARK: gradients (f32, caller layout), allocated on first use
  package var gradients: [LayerWeight: AlignedBuffer] = [:]

  // MARK: scratch and saved state
  /// The layer's work and saved-forward buffers: its own, or one set shared
  /// by all MoE layers of a model while it trains with recompute (then only
  /// the layer being recomputed needs its saved forward).
  package private(set) var scratch: ScratchSet
  private let ownScratch = ScratchSet()
  package var workerScratch: [AlignedBuffer]
  package let workerScratchFloats: Int
  package var saved: SavedForward?
  /// Routing of the last forward (for statistics and inspection).
  var lastRouting: RoutingPlan?
  public internal(set) var stats = LayerStats()
  /// Step of the jitter noise used by the next training forward.
  public var noiseStep: UInt64 = 0

  /// `touch: false` leaves the owned expert memory untouched until weights
  /// are written to it (a layer whose experts will be mapped from a file).
  public init(config: MoELayerConfig, runtime: Runtime, touch: Bool = true) throws {
    try config.validate()
    self.config = config
    self.runtime = runtime
    scratch = ownScratch
    let E = config.experts, H = config.hidden
    plan = try runtime.plan(for: config)
    var holders = [[Int]](repeating: [], count: config.allExperts)
    for (s, shard) in plan.shards.enumerated() {
      for slice in shard.slices { holders[slice.expert].append(s) }
    }
    expertShards = holders

    router = try AlignedBuffer(floats: E * H, what: "router weights")
    sharedExpertGate = try AlignedBuffer(floats: config.sharedFFN > 0 ? H : 0, what: "shared expert gate")
    workerScratchFloats = 128 * max(H, config.ffn, config.sharedFFN)
    workerScratch = try (0..<runtime.workerCount).map { _ in
      try AlignedBuffer(floats: 128 * max(H, config.ffn, config.sharedFFN), what: "worker scratch")
    }

    (shardMemory, shardSlices) = try Self.allocateShards(plan: plan, config: config, runtime: runtime)
    countOwnedBytes()
    if touch { firstTouch(shardMemory) }
  }

  /// Owned expert memory: one block per shard, on its node, and the views of
  /// its slices. A slice holds gate and up [fn, H] and its own down [H, fn]
  /// (quantized: rows of blocks). The memory is not touched here.
  private static func allocateShards(plan: PlacementPlan, config: MoELayerConfig,
                                     runtime: Runtime) throws -> ([NodeMemory], [[SliceWeights]]) {
    let storage = config.storage, H = config.hidden
    var memories: [NodeMemory] = []
    var slices: [[SliceWeights]] = []
    for shard in plan.shards {
      let bytes = max(shard.slices.reduce(0) { $0 + sliceBytes(rows: $1.ffn.count, config) }, 64)
      let memory: NodeMemory
      if plan.policy == .interleave {
        memory = try runtime.topology.allocateInterleaved(bytes: bytes)
      } else {
        memory = try runtime.topology.allocate(bytes: bytes, node: plan.policy == .none ? nil : shard.node)
      }
      memories.append(memory)
      var views: [SliceWeights] = []
      var offset = 0
      for slice in shard.slices {
        let fn = slice.ffn.count
        let base = UnsafeRawPointer(memory.pointer)
        let gate = WeightMatrix(base: base + offset, dtype: storage, ld: H)
        offset += fn * storage.rowBytes(cols: H)
        let up = WeightMatrix(base: base + offset, dtype: storage, ld: H)
        offset += fn * storage.rowBytes(cols: H)
        let down = WeightMatrix(base: base + offset, dtype: storage, ld: fn)
        offset += H * storage.rowBytes(cols: fn)
        views.append(SliceWeights(expert: slice.expert, ffn: slice.ffn, gate: gate, up: up, down: down))
      }
      slices.append(views)
    }
    return (memories, slices)
  }

  /// Bytes of a slice of `rows` FFN rows: gate and up [rows, H], down [H, rows].
  private static func sliceBytes(rows: Int, _ config: MoELayerConfig) -> Int {
    let t = config.storage, H = config.hidden
    return 2 * rows * t.rowBytes(cols: H) + H * t.rowBytes(cols: rows)
  }

  /// Zeroes each shard's memory from the workers of its node, so that pages
  /// land on that node even where binding is not possible.
  private func firstTouch(_ memories: [NodeMemory]) {
    let shards = plan.shards
    runtime.pool.run { w in
      for (s, shard) in shards.enumerated() {
        guard let local = shard.workers.firstIndex(of: w) else { continue }
        let bytes = memories[s].bytes
        let lo = bytes * local / shard.workers.count, hi = bytes * (local + 1) / shard.workers.count
        memset(memories[s].pointer + lo, 0, hi - lo)
      }
    }
  }

  // MARK: - Shapes

  public func shape(of weight: LayerWeight) throws -> [Int] {
    let E = config.experts, F = config.ffn, H = config.hidden, Fs = config.sharedFFN
    if weight.isShared && Fs == 0 {
      throw MoEError.invalid("the layer has no shared expert (shared_expert_intermediate_size is 0), so it has no \(weight.name) weight")
    }
    switch weight {
    case .router: return [E, H]
    case .gate, .up: return [E, F, H]
    case .down: return [E, H, F]
    case .sharedGate, .sharedUp: return [Fs, H]
    case .sharedDown: return [H, Fs]
    case .sharedExpertGate: return [H]
    }
  }

  /// Elements of `weight`, or of one expert of it when expert >= 0.
  public func elementCount(of weight: LayerWeight, expert: Int) throws -> Int {
    let shape = try shape(of: weight)
    if expert < 0 { return shape.reduce(1, *) }
    guard weight.isRoutedExpert else {
      throw MoEError.invalid("expert is \(expert) but \(weight.name) is not a per-expert weight; pass -1")
    }
    guard expert < config.experts else {
      throw MoEError.invalid("expert is \(expert); the layer has \(config.experts) experts (0...\(config.experts - 1))")
    }
    return shape.dropFirst().reduce(1, *)
  }

  // MARK: - Weight access

  /// Copies `data` (f32, caller layout) into `weight` (all experts when expert < 0).
  public func setWeight(_ weight: LayerWeight, expert: Int, data: UnsafePointer<Float>, count: Int) throws {
    let need = try elementCount(of: weight, expert: expert)
    guard count == need else {
      let full = try shape(of: weight)
      let shape = expert >= 0 ? Array(full.dropFirst()) : full
      throw MoEError.shape("\(weight.name)\(expert >= 0 ? " of expert \(expert)" : ""): count is \(count) but \(need) elements are needed (shape \(shape))")
    }
    let H = config.hidden
    if weight.isRoutedExpert { try ownExperts() }
    switch weight {
    case .router: router.pointer.update(from: data, count: count)
    case .sharedExpertGate: sharedExpertGate.pointer.update(from: data, count: count)
    default:
      if weight.isRoutedExpert && expertsBorrowed {
        throw MoEError.invalid("expert weights are borrowed from caller memory; change them there, or call moe_layer_borrow_experts again")
      }
      let experts: Range<Int> = weight.isShared ? config.experts..<(config.experts + 1)
        : (expert < 0 ? 0..<config.experts : expert..<(expert + 1))
      for e in experts {
        let F = config.ffn(ofExpert: e)
        // Source of expert e in caller layout.
        let src = weight.isShared ? data : data + (expert < 0 ? e * F * H : 0)
        forEachSlice(of: e) { view in
          let fn = view.ffn.count, f0 = view.ffn.lowerBound
          switch weight {
          case .gate, .sharedGate: Self.store(src + f0 * H, rows: fn, cols: H, srcLD: H, into: view.gate)
          case .up, .sharedUp: Self.store(src + f0 * H, rows: fn, cols: H, srcLD: H, into: view.up)
          default: Self.store(src + f0, rows: H, cols: fn, srcLD: F, into: view.down)
          }
        }
      }
    }
  }

  /// Copies `weight` (all experts when expert < 0) into `out` (f32, caller layout).
  public func getWeight(_ weight: LayerWeight, expert: Int, out: UnsafeMutablePointer<Float>, count: Int) throws {
    let need = try elementCount(of: weight, expert: expert)
    guard count >= need else {
      throw MoEError(.bufferTooSmall, "\(weight.name): capacity is \(count) floats but \(need) are needed")
    }
    let H = config.hidden
    switch weight {
    case .router: out.update(from: router.pointer, count: need)
    case .sharedExpertGate: out.update(from: sharedExpertGate.pointer, count: need)
    default:
      let experts: Range<Int> = weight.isShared ? config.experts..<(config.experts + 1)
        : (expert < 0 ? 0..<config.experts : expert..<(expert + 1))
      for e in experts {
        let F = config.ffn(ofExpert: e)
        let dst = weight.isShared ? out : out + (expert < 0 ? e * F * H : 0)
        // Split experts appear in several shards with disjoint rows.
        forEachSlice(of: e) { view in
          let fn = view.ffn.count, f0 = view.ffn.lowerBound
          switch weight {
          case .gate, .sharedGate: Self.load(view.gate, rows: fn, cols: H, into: dst + f0 * H, dstLD: H)
          case .up, .sharedUp: Self.load(view.up, rows: fn, cols: H, into: dst + f0 * H, dstLD: H)
          default: Self.load(view.down, rows: H, cols: fn, into: dst + f0, dstLD: F)
          }
        }
      }
    }
  }

  /// Points the routed experts' weights at caller memory without copying:
  /// gate, up [E, F, H] and down [E, H, F], f32 or bf16. The caller keeps the
  /// memory alive and unchanged while the layer uses it.
  public func borrowExperts(gate: UnsafeRawPointer, up: UnsafeRawPointer, down: UnsafeRawPointer, dtype: DType) throws {
    guard dtype == .f32 || dtype == .bf16 else {
      throw MoEError.unsupported("borrowed expert weights must be f32 or bf16, not \(dtype.name)")
    }
    let F = config.ffn, H = config.hidden, b = dtype.elementBytes
    for s in shardSlices.indices {
      for i in shardSlices[s].indices where shardSlices[s][i].expert < config.experts {
        let e = shardSlices[s][i].expert, f0 = shardSlices[s][i].ffn.lowerBound
        shardSlices[s][i].gate = WeightMatrix(base: gate + ((e * F + f0) * H) * b, dtype: dtype, ld: H)
        shardSlices[s][i].up = WeightMatrix(base: up + ((e * F + f0) * H) * b, dtype: dtype, ld: H)
        shardSlices[s][i].down = WeightMatrix(base: down + (e * H * F + f0) * b, dtype: dtype, ld: F)
      }
    }
    expertsBorrowed = true
    mappedFrom = nil
    // Without a shared expert nothing owned is left in the shards: release them.
    if config.sharedFFN == 0 {
      shardMemory = []
      ownedBytes = 0
      boundBytes = 0
    }
  }

  /// Points the routed experts' views at a checkpoint file's mapped bytes
  /// without copying: expert e's gate and up [F, H] and down [H, F] at
  /// gate[e], up[e], down[e], in the layer's storage (f32 or bf16). `owner`
  /// keeps the mapping alive. Changing a weight first copies them into owned
  /// memory (ownExperts).
  package func mapExperts(owner: AnyObject, gate: [UnsafeRawPointer], up: [UnsafeRawPointer],
                          down: [UnsafeRawPointer]) throws {
    let dtype = config.storage, E = config.experts
    guard dtype == .f32 || dtype == .bf16 else {
      throw MoEError.unsupported("mapped expert weights must be f32 or bf16, not \(dtype.name)")
    }
    guard gate.count == E, up.count == E, down.count == E else {
      throw MoEError.invalid("mapping \(gate.count), \(up.count) and \(down.count) experts' matrices; the layer has \(E)")
    }
    guard !expertsBorrowed else { throw MoEError.invalid("expert weights are borrowed from caller memory") }
    let F = config.ffn, H = config.hidden, b = dtype.blockBytes
    for s in shardSlices.indices {
      for i in shardSlices[s].indices where shardSlices[s][i].expert < E {
        let e = shardSlices[s][i].expert, f0 = shardSlices[s][i].ffn.lowerBound
        shardSlices[s][i].gate = WeightMatrix(base: gate[e] + f0 * H * b, dtype: dtype, ld: H)
        shardSlices[s][i].up = WeightMatrix(base: up[e] + f0 * H * b, dtype: dtype, ld: H)
        shardSlices[s][i].down = WeightMatrix(base: down[e] + f0 * b, dtype: dtype, ld: F)
      }
    }
    mappedFrom = owner
    // Owned memory is left for the shared expert alone (the rest stays untouched).
    mappedBytes = ownedBytes - ownedSharedBytes()
    ownedBytes -= mappedBytes
    boundBytes = min(boundBytes, ownedBytes)
    if config.sharedFFN == 0 { shardMemory = [] }
  }

  /// ownedBytes and boundBytes of the shard memory.
  private func countOwnedBytes() {
    ownedBytes = shardMemory.reduce(0) { $0 + $1.bytes }
    boundBytes = shardMemory.reduce(0) { $0 + ($1.bound ? $1.bytes : 0) }
  }

  private func ownedSharedBytes() -> Int {
    shardSlices.joined().filter { $0.expert == config.experts }.reduce(0) { $0 + Self.sliceBytes(rows: $1.ffn.count, config) }
  }

  /// Copies mapped expert weights into owned memory, placed and first
  /// touched as at creation, so that they can change; nothing when the
  /// experts are owned already.
  package func ownExperts() throws {
    guard mappedFrom != nil else { return }
    let (memories, slices) = try Self.allocateShards(plan: plan, config: config, runtime: runtime)
    firstTouch(memories)
    let H = config.hidden, b = config.storage.blockBytes
    func copy(_ from: WeightMatrix, _ to: WeightMatrix, rows: Int, cols: Int) {
      let dst = UnsafeMutableRawPointer(mutating: to.base)
      for r in 0..<rows { (dst + r * to.ld * b).copyMemory(from: from.base + r * from.ld * b, byteCount: cols * b) }
    }
    for s in slices.indices {
      for (from, to) in zip(shardSlices[s], slices[s]) {
        let fn = from.ffn.count
        copy(from.gate, to.gate, rows: fn, cols: H)
        copy(from.up, to.up, rows: fn, cols: H)
        copy(from.down, to.down, rows: H, cols: fn)
      }
    }
    shardMemory = memories
    shardSlices = slices
    countOwnedBytes()
    mappedBytes = 0
    mappedFrom = nil
  }

  /// Fills the router and expert weights with N(0, std^2) draws (deterministic
  /// per seed and independent of placement), the shared-expert gate with zeros.
  public func initializeRandom(seed: UInt64, std: Float) throws {
    guard std.isFinite, std >= 0 else { throw MoEError.invalid("std is \(std); it must be finite and >= 0") }
    if expertsBorrowed { throw MoEError.invalid("expert weights are borrowed from caller memory; initialize them there") }
    try ownExperts()
    let H = config.hidden
    func fill(_ kind: LayerWeight, _ stream: UInt64, _ expert: Int) throws {
      let n = try elementCount(of: kind, expert: expert)
      var values = [Float](repeating: 0, count: n)
      var rng = Rng(seed: seed, stream: [stream, UInt64(max(expert, 0))])
      for i in 0..<n { values[i] = Float(rng.normal()) * std }
      try values.withUnsafeBufferPointer { try setWeight(kind, expert: expert, data: $0.baseAddress!, count: n) }
    }
    try fill(.router, 1, -1)
    for e in 0..<config.experts {
      try fill(.gate, 2, e)
      try fill(.up, 3, e)
      try fill(.down, 4, e)
    }
    if config.sharedFFN > 0 {
      try fill(.sharedGate, 5, -1)
      try fill(.sharedUp, 6, -1)
      try fill(.sharedDown, 7, -1)
      memset(sharedExpertGate.pointer, 0, H * 4)
    }
  }

  func forEachSlice(of expert: Int, _ body: (SliceWeights) -> Void) {
    for s in expertShards[expert] {
      for view in shardSlices[s] where view.expert == expert { body(view) }
    }
  }

  package static func store(_ src: UnsafePointer<Float>, rows: Int, cols: Int, srcLD: Int, into w: WeightMatrix) {
    let dst = UnsafeMutableRawPointer(mutating: w.base)
    if w.dtype.isQuantized {
      // Quantized views hold whole rows: cols == w.ld.
      packQuantizedRows(w.dtype, values: src, rows: rows, cols: cols, ld: srcLD, into: dst)
      return
    }
    for r in 0..<rows {
      let s = src + r * srcLD
      if w.dtype == .f32 {
        (dst.assumingMemoryBound(to: Float.self) + r * w.ld).update(from: s, count: cols)
      } else {
        let d = dst.assumingMemoryBound(to: UInt16.self) + r * w.ld
        for c in 0..<cols { d[c] = floatToBF16(s[c]) }
      }
    }
  }

  package static func load(_ w: WeightMatrix, rows: Int, cols: Int, into dst: UnsafeMutablePointer<Float>, dstLD: Int) {
    for r in 0..<rows {
      if w.dtype.isQuantized {
        QuantizedGEMM.row(w, r, cols: cols, into: dst + r * dstLD)
      } else if w.dtype == .f32 {
        (dst + r * dstLD).update(from: w.f32 + r * w.ld, count: cols)
      } else {
        widenBF16(w.bf16 + r * w.ld, dst + r * dstLD, count: cols)
      }
    }
  }

  /// Copies GGML blocks of `weight` (one expert, or the shared expert's with
  /// expert -1) into a layer whose storage is their type, bit for bit:
  /// `blocks` holds the matrix's rows (as the checkpoint stores them, [F, H]
  /// or [H, F]) of cols / 32 blocks each, `byteCount` bytes in all.
  public func setWeightBlocks(_ weight: LayerWeight, expert: Int, dtype: DType,
                              blocks: UnsafeRawPointer, byteCount: Int) throws {
    guard dtype.isQuantized, dtype == config.storage else {
      throw MoEError.unsupported("\(weight.name): \(dtype.name) blocks cannot be kept by a layer storing \(config.storage.name)")
    }
    guard weight != .router, weight != .sharedExpertGate else {
      throw MoEError.invalid("\(weight.name) is held in f32; set it with setWeight")
    }
    guard !(weight.isRoutedExpert && expertsBorrowed) else {
      throw MoEError.invalid("expert weights are borrowed from caller memory; change them there")
    }
    if weight.isRoutedExpert { try ownExperts() }
    guard weight.isShared || (0..<config.experts).contains(expert) else {
      throw MoEError.invalid("expert is \(expert); blocks are set one expert at a time (0...\(config.experts - 1))")
    }
    let need = try elementCount(of: weight, expert: weight.isShared ? -1 : expert)
    guard byteCount == need / 32 * dtype.blockBytes else {
      throw MoEError.shape("\(weight.name): \(byteCount) bytes of \(dtype.name) blocks, but \(need / 32 * dtype.blockBytes) are needed")
    }
    let H = config.hidden, e = weight.isShared ? config.experts : expert
    let F = config.ffn(ofExpert: e), perH = H / 32 * dtype.blockBytes, perF = F / 32 * dtype.blockBytes
    forEachSlice(of: e) { view in
      let fn = view.ffn.count, f0 = view.ffn.lowerBound
      switch weight {
      case .gate, .sharedGate, .up, .sharedUp:
        let w = weight == .gate || weight == .sharedGate ? view.gate : view.up
        packQuantizedRows(dtype, blocks: blocks + f0 * perH, rows: fn, cols: H, blockStride: perH,
                          into: UnsafeMutableRawPointer(mutating: w.base))
      default:
        // Row r of the slice's down projection: blocks f0 / 32 ..< (f0 + fn) / 32 of row r.
        packQuantizedRows(dtype, blocks: blocks + f0 / 32 * dtype.blockBytes, rows: H, cols: fn, blockStride: perF,
                          into: UnsafeMutableRawPointer(mutating: view.down.base))
      }
    }
  }

  // MARK: - Gradients

  package func gradient(_ weight: LayerWeight) throws -> AlignedBuffer {
    if let g = gradients[weight] { return g }
    let n = try elementCount(of: weight, expert: -1)
    let g = try AlignedBuffer(floats: n, what: "\(weight.name) gradient")
    runtime.zero(g.pointer, floats: n)
    gradients[weight] = g
    return g
  }

  public func getGradient(_ weight: LayerWeight, expert: Int, out: UnsafeMutablePointer<Float>, count: Int) throws {
    let need = try elementCount(of: weight, expert: expert)
    guard count >= need else {
      throw MoEError(.bufferTooSmall, "\(weight.name) gradient: capacity is \(count) floats but \(need) are needed")
    }
    let g = try gradient(weight)
    out.update(from: g.pointer + (expert >= 0 ? expert * need : 0), count: need)
  }

  /// Sets the balance and z-loss coefficients backward uses.
  public func setLossCoefficients(balance: Float, z: Float) throws {
    guard balance.isFinite, balance >= 0, z.isFinite, z >= 0 else {
      throw MoEError.invalid("loss coefficients must be finite and >= 0 (balance \(balance), z \(z))")
    }
    config.balanceCoef = balance
    config.zCoef = z
  }

  /// Runs on `shared` (nil: the layer's own set again); the set left behind
  /// is released, and so is any saved forward.
  package func useScratch(_ shared: ScratchSet?) {
    let next = shared ?? ownScratch
    guard next !== scratch else { return }
    if scratch === ownScratch { ownScratch.release() }
    scratch = next
    saved = nil
  }

  public func zeroGradients() {
    for (_, g) in gradients { memset(g.pointer, 0, g.floats * 4) }
  }
}

/// Everything backward needs from one forward.
package struct SavedForward {
  package var tokens: Int
  package var routing: RoutingPlan
  var jittered: Bool
}
