#if canImport(Glibc)
import Glibc
#endif

/// What an upcycle run produced.
public struct UpcycleReport: Sendable {
  public var bytesWritten: UInt64 = 0
  public var tensorsWritten = 0
  public var shards = 0
  public var moeLayers = 0
  public var seconds = 0.0
  public var peakRSS: UInt64 = 0
}

/// Dense checkpoint -> MoE checkpoint, streamed one layer at a time.
public final class Upcycler {
  /// Called with (done bytes, total bytes, stage); return false to cancel.
  public typealias Progress = (UInt64, UInt64, String) -> Bool

  enum Producer {
    case copy(String)                      // a source tensor, converted to the output dtype
    case zeros
    case router(layer: Int)
    case expert(layer: Int, expert: Int, Projection)
    case shared(layer: Int, Projection)
  }

  struct PlannedTensor {
    var name: String
    var dtype: DType
    var shape: [Int]
    var producer: Producer
    var byteCount: Int { shape.reduce(1, *) * dtype.blockBytes }
  }

  let checkpoint: Checkpoint
  let options: UpcycleOptions
  let moeLayers: [Bool]
  let expertSize: Int
  var plan: [PlannedTensor] = []
  private var cachedLayer: (index: Int, builder: ExpertBuilder)?

  public init(checkpoint: Checkpoint, options: UpcycleOptions) throws {
    self.checkpoint = checkpoint
    var o = options
    let d = checkpoint.description
    if d.architecture.isMoE {
      throw MoEError.unsupported("'\(checkpoint.path)' is already an MoE checkpoint (\(d.architecture.rawValue)); upcycling needs a dense model")
    }
    if o.format == .qwen2Moe { o.sharedExpert = true }
    let I = d.intermediateSize
    guard o.numExperts >= 1 && o.numExperts <= 1024 else {
      throw MoEError.invalid("experts must be in 1..1024 (got \(o.numExperts))")
    }
    guard o.topK >= 1 && o.topK <= o.numExperts else {
      throw MoEError.invalid("top-k must be in 1..\(o.numExperts) (the number of experts), got \(o.topK)")
    }
    if o.method == .drop || o.method == .noise {
      guard o.ratio > 0 && o.ratio <= 1 else { throw MoEError.invalid("ratio must be in (0, 1] (got \(o.ratio))") }
    }
    guard o.noiseStd.isFinite && o.noiseStd >= 0 else { throw MoEError.invalid("noise std must be finite and >= 0 (got \(o.noiseStd))") }
    guard o.routerStd.isFinite && o.routerStd >= 0 else { throw MoEError.invalid("router std must be finite and >= 0 (got \(o.routerStd))") }
    guard o.granularity >= 0 && o.granularity <= I else {
      throw MoEError.invalid("granularity must be in 0..\(I) (the FFN size), got \(o.granularity)")
    }
    switch o.method {
    case .granular:
      let G = o.granularity == 0 ? 1 : o.granularity
      guard I % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the FFN size \(I)") }
      guard o.numExperts % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the number of experts \(o.numExperts)") }
    case .partition:
      let G = o.granularity == 0 ? o.numExperts : o.granularity
      guard I % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the FFN size \(I) (partition experts have I/G neurons)") }
      if o.partitionDisjoint && o.numExperts > G {
        throw MoEError.invalid("disjoint partition needs experts (\(o.numExperts)) <= granularity (\(G)) so that E x I/G <= I")
      }
    default:
      guard o.granularity == 0 || o.granularity == 1 else {
        throw MoEError.invalid("granularity applies to the granular and partition methods only")
      }
    }
    let layers = try parseLayerSelection(o.layers, numLayers: d.numLayers)
    switch o.format {
    case .mixtral:
      guard !layers.contains(false) else {
        throw MoEError.unsupported("the mixtral format makes every layer MoE; use --format qwen2-moe for a layer subset")
      }
      guard !o.sharedExpert else { throw MoEError.unsupported("the mixtral format has no shared expert; use --format qwen2-moe") }
      guard o.renormalizes else {
        throw MoEError.unsupported("the mixtral format renormalizes the top-k weights; softmax-topk without renormalization needs --format qwen2-moe")
      }
      guard !d.qkvBias else {
        throw MoEError.unsupported("'\(checkpoint.path)' has q/k/v biases (\(d.architecture.rawValue)), which Mixtral cannot hold; use --format qwen2-moe")
      }
    case .qwen2Moe:
      guard d.headDim * d.numHeads == d.hiddenSize else {
        throw MoEError.unsupported("the qwen2-moe format needs head_dim x heads == hidden size (\(d.headDim) x \(d.numHeads) != \(d.hiddenSize))")
      }
    }
    guard o.maxShardBytes >= 1 << 10 else { throw MoEError.invalid("max shard size must be at least 1 KiB (got \(o.maxShardBytes))") }
    self.options = o
    moeLayers = layers
    expertSize = ExpertBuilder.expertSize(options: o, intermediate: I)
    try makePlan()
  }

  // MARK: Plan

  private func outputDType(forSource name: String) throws -> DType {
    switch options.dtype {
    case .f32: return .f32
    case .bf16: return .bf16
    case .f16: return .f16
    case .keep:
      let s = try checkpoint.source.require(name).dtype
      return s.isQuantized ? .f32 : s
    }
  }

  private func makePlan() throws {
    let d = checkpoint.description
    let H = d.hiddenSize, I = d.intermediateSize, m = expertSize
    var p: [PlannedTensor] = []
    func copy(_ name: String, as outName: String? = nil) throws {
      let info = try checkpoint.source.require(name)
      p.append(PlannedTensor(name: outName ?? name, dtype: try outputDType(forSource: name), shape: info.shape, producer: .copy(name)))
    }
    try copy("model.embed_tokens.weight")
    for l in 0..<d.numLayers {
      let prefix = ModelDescription.layerPrefix(l)
      let ffn = d.denseFFNNames(layer: l)
      let newDType = try outputDType(forSource: ffn.gate)
      for (name, _) in d.attentionTensors(layer: l) where name.hasSuffix("layernorm.weight") == false {
        try copy(name)
      }
      if options.format == .qwen2Moe && !d.qkvBias {
        // Qwen2-MoE attention always has q/k/v biases: zeros keep the function.
        let kv = d.numKVHeads * d.headDim
        for (proj, rows) in [("q_proj", d.numHeads * d.headDim), ("k_proj", kv), ("v_proj", kv)] {
          p.append(PlannedTensor(name: prefix + "self_attn.\(proj).bias", dtype: newDType, shape: [rows], producer: .zeros))
        }
      }
      try copy(prefix + "input_layernorm.weight")
      try copy(prefix + "post_attention_layernorm.weight")
      guard moeLayers[l] else {
        try copy(ffn.gate); try copy(ffn.up); try copy(ffn.down)
        continue
      }
      let E = options.numExperts
      switch options.format {
      case .mixtral:
        let b = prefix + "block_sparse_moe."
        p.append(PlannedTensor(name: b + "gate.weight", dtype: newDType, shape: [E, H], producer: .router(layer: l)))
        for e in 0..<E {
          for (proj, w) in [(Projection.gate, "w1"), (.down, "w2"), (.up, "w3")] {
            p.append(PlannedTensor(name: b + "experts.\(e).\(w).weight", dtype: newDType,
                                   shape: proj == .down ? [H, m] : [m, H], producer: .expert(layer: l, expert: e, proj)))
          }
        }
      case .qwen2Moe:
        let b = prefix + "mlp."
        p.append(PlannedTensor(name: b + "gate.weight", dtype: newDType, shape: [E, H], producer: .router(layer: l)))
        for e in 0..<E {
          for (proj, w) in [(Projection.gate, "gate_proj"), (.up, "up_proj"), (.down, "down_proj")] {
            p.append(PlannedTensor(name: b + "experts.\(e).\(w).weight", dtype: newDType,
                                   shape: proj == .down ? [H, m] : [m, H], producer: .expert(layer: l, expert: e, proj)))
          }
        }
        for (proj, w) in [(Projection.gate, "gate_proj"), (.up, "up_proj"), (.down, "down_proj")] {
          p.append(PlannedTensor(name: b + "shared_expert.\(w).weight", dtype: newDType,
                                 shape: proj == .down ? [H, I] : [I, H], producer: .shared(layer: l, proj)))
        }
        p.append(PlannedTensor(name: b + "shared_expert_gate.weight", dtype: newDType, shape: [1, H], producer: .zeros))
      }
    }
    try copy("model.norm.weight")
    if !d.tiedEmbeddings { try copy("lm_head.weight") }
    plan = p
  }

  // MARK: Producing tensor data

  private func builder(layer l: Int) throws -> ExpertBuilder {
    if let c = cachedLayer, c.index == l { return c.builder }
    cachedLayer = nil
    let d = checkpoint.description
    let n = d.denseFFNNames(layer: l)
    let I = d.intermediateSize, H = d.hiddenSize
    let dense = DenseFFN(intermediate: I, hidden: H,
                         gate: try checkpoint.source.readFloat(n.gate, shape: [I, H]),
                         up: try checkpoint.source.readFloat(n.up, shape: [I, H]),
                         down: try checkpoint.source.readFloat(n.down, shape: [H, I]))
    for name in [n.gate, n.up, n.down] { checkpoint.source.release(name) }
    let b = ExpertBuilder(options: options, layer: l, dense: dense)
    cachedLayer = (l, b)
    return b
  }

  func produce(_ t: PlannedTensor, into dst: UnsafeMutablePointer<Float>) throws {
    let count = t.shape.reduce(1, *)
    switch t.producer {
    case let .copy(name):
      try checkpoint.source.readFloat(name, into: dst)
      checkpoint.source.release(name)
    case .zeros:
      dst.update(repeating: 0, count: count)
    case let .router(l):
      let r = try builder(layer: l).router()
      r.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: count) }
    case let .expert(l, e, proj):
      try builder(layer: l).expert(e, proj, into: dst)
    case let .shared(l, proj):
      try builder(layer: l).sharedExpert(proj, into: dst)
    }
  }

  // MARK: Writing

  /// Writes the MoE checkpoint to `output` (temporary directory renamed into place).
  public func write(to output: String, progress: Progress?) throws -> UpcycleReport {
    let start = monotonicSeconds()
    let target = try OutputDirectory(path: output, force: options.force, input: checkpoint.path)
    defer { target.discard() }

    // Shards: consecutive tensors up to the size limit.
    let shards = CheckpointFiles.shards(plan.map(\.byteCount), maxBytes: options.maxShardBytes)
    let totalBytes = UInt64(plan.reduce(0) { $0 + $1.byteCount })
    var report = UpcycleReport()
    report.shards = shards.count
    report.moeLayers = moeLayers.filter { $0 }.count
    var done: UInt64 = 0
    if let progress, !progress(0, totalBytes, "upcycle") { throw MoEError(.cancelled, "upcycle cancelled by the progress callback") }

    // Tensors are produced (read, built, encoded) on a background thread while the
    // calling thread writes the previous one: two slots, bounded by the largest tensor.
    let maxElements = plan.map { $0.shape.reduce(1, *) }.max() ?? 0
    let pipeline = ProductionPipeline(slots: options.threads == 1 ? 1 : 2, maxElements: maxElements) { [unowned self] i, slot in
      let t = self.plan[i]
      try self.produce(t, into: slot.floats)
      encodeFromFloat(t.dtype, src: slot.floats, count: t.shape.reduce(1, *), dst: slot.encoded)
    }
    pipeline.start(count: plan.count)
    defer { pipeline.finish() }
    var weightMap: [(String, JSON)] = []
    let metadata = [("format", "pt")]
    for (s, indices) in shards.enumerated() {
      let fileName = CheckpointFiles.shardFileName(s, of: shards.count)
      let file = try OutputFile(path: FileSystem.join(target.temporary, fileName))
      let header = Safetensors.headerBytes(
        tensors: indices.map { (plan[$0].name, plan[$0].dtype, plan[$0].shape) }, metadata: metadata)
      try file.write(header)
      for i in indices {
        let t = plan[i]
        let slot = try pipeline.next()
        try file.write(UnsafeRawBufferPointer(start: slot.encoded, count: t.byteCount))
        pipeline.release(slot)
        weightMap.append((t.name, .string(fileName)))
        done += UInt64(t.byteCount)
        report.tensorsWritten += 1
        if let progress, !progress(done, totalBytes, "upcycle") {
          throw MoEError(.cancelled, "upcycle cancelled by the progress callback")
        }
      }
      try file.close()
      report.bytesWritten += file.bytesWritten
    }
    pipeline.finish()
    cachedLayer = nil
    if shards.count > 1 {
      report.bytesWritten += try CheckpointFiles.writeJSON(
        CheckpointFiles.index(totalBytes: Int(totalBytes), weightMap: weightMap),
        FileSystem.join(target.temporary, "model.safetensors.index.json"))
    }
    report.bytesWritten += try CheckpointFiles.writeJSON(makeConfig(), FileSystem.join(target.temporary, "config.json"))
    report.bytesWritten += try CheckpointFiles.writeSideFiles(
      into: target.temporary, directory: checkpoint.directory, gguf: checkpoint.gguf, description: checkpoint.description)
    try target.commit()
    report.seconds = monotonicSeconds() - start
    report.peakRSS = peakResidentBytes()
    return report
  }

  // MARK: Config

  func makeConfig() -> JSON {
    let d = checkpoint.description
    let o = options
    let dtypeName: String
    switch plan.first(where: { if case .expert = $0.producer { return true }; return false })?.dtype ?? plan[0].dtype {
    case .bf16: dtypeName = "bfloat16"
    case .f16: dtypeName = "float16"
    default: dtypeName = "float32"
    }
    var c: [(String, JSON)] = []
    switch o.format {
    case .mixtral:
      c = [
        ("architectures", .array([.string("MixtralForCausalLM")])),
        ("model_type", .string("mixtral")),
        ("vocab_size", .int(d.vocabSize)),
        ("hidden_size", .int(d.hiddenSize)),
        ("intermediate_size", .int(expertSize)),
        ("num_hidden_layers", .int(d.numLayers)),
        ("num_attention_heads", .int(d.numHeads)),
        ("num_key_value_heads", .int(d.numKVHeads)),
        ("head_dim", .int(d.headDim)),
        ("hidden_act", .string("silu")),
        ("max_position_embeddings", .int(d.maxPositionEmbeddings)),
        ("initializer_range", .number(0.02)),
        ("rms_norm_eps", .number(d.rmsNormEps)),
        ("use_cache", .bool(true)),
        ("rope_theta", .number(d.ropeTheta)),
        ("sliding_window", d.sourceConfig?["sliding_window"] ?? .null),
        ("attention_dropout", .number(0)),
        ("num_experts_per_tok", .int(o.topK)),
        ("num_local_experts", .int(o.numExperts)),
        ("output_router_logits", .bool(false)),
        ("router_aux_loss_coef", .number(o.routerAuxLossCoef)),
        ("router_jitter_noise", .number(0)),
        ("tie_word_embeddings", .bool(d.tiedEmbeddings)),
      ]
    case .qwen2Moe:
      let dense = (0..<d.numLayers).filter { !moeLayers[$0] }
      c = [
        ("architectures", .array([.string("Qwen2MoeForCausalLM")])),
        ("model_type", .string("qwen2_moe")),
        ("vocab_size", .int(d.vocabSize)),
        ("hidden_size", .int(d.hiddenSize)),
        ("intermediate_size", .int(d.intermediateSize)),
        ("num_hidden_layers", .int(d.numLayers)),
        ("num_attention_heads", .int(d.numHeads)),
        ("num_key_value_heads", .int(d.numKVHeads)),
        ("hidden_act", .string("silu")),
        ("max_position_embeddings", .int(d.maxPositionEmbeddings)),
        ("initializer_range", .number(0.02)),
        ("rms_norm_eps", .number(d.rmsNormEps)),
        ("use_cache", .bool(true)),
        ("rope_theta", .number(d.ropeTheta)),
        ("use_sliding_window", .bool(false)),
        ("sliding_window", d.sourceConfig?["sliding_window"] ?? .null),
        ("max_window_layers", .int(d.numLayers)),
        ("attention_dropout", .number(0)),
        ("qkv_bias", .bool(true)),
        ("decoder_sparse_step", .int(1)),
        ("moe_intermediate_size", .int(expertSize)),
        ("shared_expert_intermediate_size", .int(d.intermediateSize)),
        ("num_experts_per_tok", .int(o.topK)),
        ("num_experts", .int(o.numExperts)),
        ("norm_topk_prob", .bool(o.renormalizes)),
        ("output_router_logits", .bool(false)),
        ("router_aux_loss_coef", .number(o.routerAuxLossCoef)),
        ("mlp_only_layers", .array(dense.map { .int($0) })),
        ("tie_word_embeddings", .bool(d.tiedEmbeddings)),
      ]
    }
    if let b = d.bosTokenId { c.append(("bos_token_id", .int(b))) }
    if let e = d.eosTokenId { c.append(("eos_token_id", .int(e))) }
    if let rs = d.sourceConfig?["rope_scaling"], !rs.isNull { c.append(("rope_scaling", rs)) }
    c.append(("torch_dtype", .string(dtypeName)))
    var record: [(String, JSON)] = [
      ("version", .string(moeupcycleVersion)),
      ("source_architecture", .string(d.architecture.rawValue)),
      ("method", .string(o.methodName)),
      ("routing", .string(o.routingName)),
      ("seed", .number(Double(o.seed))),
      ("num_experts", .int(o.numExperts)),
      ("top_k", .int(o.topK)),
      ("expert_intermediate_size", .int(expertSize)),
      ("shared_expert", .bool(o.sharedExpert)),
      ("moe_layers", .array((0..<d.numLayers).filter { moeLayers[$0] }.map { .int($0) })),
    ]
    switch o.method {
    case .drop, .noise:
      record.append(("ratio", .number(o.ratio)))
      record.append(("shared_indices", .bool(o.sharedIndices)))
      if o.method == .noise { record.append(("noise_std", .number(o.noiseStd))) }
    case .granular:
      record.append(("granularity", .int(o.granularity == 0 ? 1 : o.granularity)))
    case .partition:
      record.append(("granularity", .int(o.granularity == 0 ? o.numExperts : o.granularity)))
      record.append(("partition_disjoint", .bool(o.partitionDisjoint)))
    case .copy: break
    }
    c.append(("moeupcycle", .object(record)))
    return .object(c)
  }
}

public let moeupcycleVersion = "0.1.0"

/// An output directory written under a temporary name and renamed into place.
final class OutputDirectory {
  let path: String
  let temporary: String
  private var committed = false
  private let force: Bool

  init(path: String, force: Bool, input: String) throws {
    var p = path
    while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
    guard !p.isEmpty else { throw MoEError.invalid("output path is empty") }
    self.path = p
    self.force = force
    let parent = FileSystem.parent(of: p)
    guard FileSystem.isDirectory(parent) else {
      throw MoEError.notFound("the output's parent directory '\(parent)' does not exist")
    }
    if FileSystem.exists(p) {
      guard force else { throw MoEError(.exists, "output '\(p)' already exists (pass force to replace it)") }
      // Never replace the input or a directory containing it.
      if let ri = realPath(input), let ro = realPath(p), ri == ro || ri.hasPrefix(ro + "/") {
        throw MoEError.invalid("output '\(p)' is or contains the input '\(input)'; refusing to replace it")
      }
    }
    temporary = FileSystem.join(parent, ".\(FileSystem.baseName(of: p)).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try FileSystem.makeDirectory(temporary)
  }

  func commit() throws {
    if FileSystem.exists(path) {
      guard force else { throw MoEError(.exists, "output '\(path)' appeared while writing; refusing to replace it") }
      let old = temporary + ".old"
      try FileSystem.rename(path, old)
      do { try FileSystem.rename(temporary, path) } catch {
        try? FileSystem.rename(old, path)
        throw error
      }
      FileSystem.removeTree(old)
    } else {
      try FileSystem.rename(temporary, path)
    }
    committed = true
  }

  func discard() {
    if !committed { FileSystem.removeTree(temporary) }
  }
}

func realPath(_ p: String) -> String? {
  guard let r = realpath(p, nil) else { return nil }
  defer { free(r) }
  return String(cString: r)
}

/// Produces items 0..<count in order into a ring of buffers, on a background thread when
/// there are two or more slots (inline otherwise). Errors surface from `next()` in order.
final class ProductionPipeline: @unchecked Sendable {
  final class Slot {
    let floats: UnsafeMutablePointer<Float>
    let encoded: UnsafeMutableRawPointer
    var error: Error?
    init(maxElements: Int) {
      floats = .allocate(capacity: max(1, maxElements))
      encoded = .allocate(byteCount: max(4, maxElements * 4), alignment: 64)
    }
    deinit { floats.deallocate(); encoded.deallocate() }
  }

  private let slots: [Slot]
  private let empty: [Semaphore]
  private let full: [Semaphore]
  private let produce: (Int, Slot) throws -> Void
  private var thread: BackgroundThread?
  private var stop = false
  private var count = 0
  private var nextIndex = 0
  private var produced = 0

  init(slots n: Int, maxElements: Int, produce: @escaping (Int, Slot) throws -> Void) {
    slots = (0..<n).map { _ in Slot(maxElements: maxElements) }
    empty = (0..<n).map { _ in Semaphore(1) }
    full = (0..<n).map { _ in Semaphore(0) }
    self.produce = produce
  }

  func start(count: Int) {
    self.count = count
    guard slots.count > 1 else { return }
    let t = BackgroundThread { [self] in
      for i in 0..<count {
        let s = i % slots.count
        empty[s].wait()
        if stop { full[s].signal(); return }
        do { try produce(i, slots[s]) } catch {
          slots[s].error = error
          full[s].signal()
          return
        }
        full[s].signal()
      }
    }
    if t.start() { thread = t }
  }

  /// The next produced item (blocks until it is ready).
  func next() throws -> Slot {
    let s = nextIndex % slots.count
    let slot = slots[s]
    if thread == nil {
      try produce(nextIndex, slot)
    } else {
      full[s].wait()
      if let e = slot.error { throw e }
    }
    nextIndex += 1
    return slot
  }

  func release(_ slot: Slot) {
    guard thread != nil, let s = slots.firstIndex(where: { $0 === slot }) else { return }
    empty[s].signal()
  }

  /// Stops the producer and waits for it; safe to call more than once.
  func finish() {
    guard let t = thread else { return }
    stop = true
    for e in empty { e.signal() }
    t.join()
    thread = nil
  }
}
