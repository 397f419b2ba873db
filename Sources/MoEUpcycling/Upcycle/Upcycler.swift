import MoESupport
import MoEFormats
import MoELayer
import MoERuntime
import MoEModel
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
  /// Temporaries of the same output left by killed runs, removed before writing.
  public var staleTemporaries = StaleTemporaries()
  /// The largest cosine similarity between two router rows of different
  /// experts (granular: of different virtual experts) over the MoE layers, and
  /// its layer; 1 when two rows are zero. Near 1, the router cannot tell those
  /// experts apart. NaN (layer -1) when not measured (more than 256 rows).
  public var routerMaxSimilarity = Double.nan
  public var routerSimilarLayer = -1
}

/// Dense checkpoint -> MoE checkpoint, streamed one layer at a time.
public final class Upcycler {
  /// Called with (done bytes, total bytes, stage); return false to cancel.
  public typealias Progress = (UInt64, UInt64, String) -> Bool

  package enum Producer {
    case copy(String)                      // a source tensor, converted to the output dtype
    case zeros
    case router(layer: Int)
    case expert(layer: Int, expert: Int, Projection)
    case shared(layer: Int, Projection)
  }

  package struct PlannedTensor {
    package var name: String
    package var dtype: DType
    package var shape: [Int]
    package var producer: Producer
    package var byteCount: Int { shape.reduce(1, *) * dtype.blockBytes }
  }

  package let checkpoint: Checkpoint
  package let options: UpcycleOptions
  package let moeLayers: [Bool]
  package let expertSize: Int
  package var plan: [PlannedTensor] = []
  var cachedLayer: (index: Int, builder: ExpertBuilder)?
  /// Calibration statistics and router prompts (DataDerived), per layer.
  let layerData: [LayerData]
  /// What the config records about the calibration data.
  let calibrationRecord: [(String, JSON)]
  /// Intermediate size of the shared expert (0 = none).
  package let sharedSize: Int
  /// The largest router-row similarity seen while producing (UpcycleReport).
  var routerSimilarity: (value: Double, layer: Int) = (.nan, -1)

  /// The largest cosine similarity between rows 0, every, 2 every, ... of a
  /// [rows, width] matrix (1 for two zero rows, 0 for a zero and a non-zero
  /// row); NaN for fewer than two such rows or more than 256.
  static func maxRowSimilarity(_ m: [Float], rows: Int, width: Int, every: Int) -> Double {
    let picked = Array(stride(from: 0, to: rows, by: max(1, every)))
    guard picked.count >= 2, picked.count <= 256 else { return .nan }
    let norms = picked.map { r -> Double in
      var s = 0.0
      for i in 0..<width { let v = Double(m[r * width + i]); s += v * v }
      return s.squareRoot()
    }
    var best = -Double.infinity
    for a in 0..<picked.count {
      for b in (a + 1)..<picked.count {
        let na = norms[a], nb = norms[b]
        var sim: Double
        if na == 0 || nb == 0 {
          sim = na == nb ? 1 : 0
        } else {
          var dot = 0.0
          for i in 0..<width { dot += Double(m[picked[a] * width + i]) * Double(m[picked[b] * width + i]) }
          sim = dot / (na * nb)
        }
        best = max(best, sim)
      }
    }
    return best
  }

  public init(checkpoint: Checkpoint, options: UpcycleOptions) throws {
    self.checkpoint = checkpoint
    var o = options
    let d = checkpoint.description
    if d.architecture.isMoE {
      throw MoEError.unsupported("'\(checkpoint.path)' is already an MoE checkpoint (\(d.architecture.rawValue)); upcycling needs a dense model")
    }
    if o.format == .qwen2Moe { o.sharedExpert = true }
    let I = d.intermediateSize
    guard o.numExperts >= 1 && o.numExperts <= UpcycleOptions.maxExperts else {
      throw MoEError.invalid("num_experts must be in 1..\(UpcycleOptions.maxExperts) (got \(o.numExperts)); every expert adds three FFN-sized tensors per MoE layer to the output")
    }
    guard o.topK >= 1 && o.topK <= o.numExperts else {
      throw MoEError.invalid("top-k must be in 1..\(o.numExperts) (the number of experts), got \(o.topK)")
    }
    guard o.noiseStd.isFinite && o.noiseStd >= 0 else { throw MoEError.invalid("noise std must be finite and >= 0 (got \(o.noiseStd))") }
    guard o.routerStd.isFinite && o.routerStd >= 0 else { throw MoEError.invalid("router std must be finite and >= 0 (got \(o.routerStd))") }
    guard o.granularity >= 0 && o.granularity <= I else {
      throw MoEError.invalid("granularity must be in 0..\(I) (the FFN size), got \(o.granularity)")
    }
    guard o.sharedFromFrequent >= 0 && o.sharedFromFrequent < I else {
      throw MoEError.invalid("shared-from-frequent must be in 0..<\(I) (the FFN size), got \(o.sharedFromFrequent)")
    }
    if o.sharedFromFrequent > 0 {
      guard o.method == .partition else {
        throw MoEError.unsupported("shared-from-frequent builds the routed experts from the other neurons, which only the partition method does (got \(o.methodName))")
      }
      guard o.format == .qwen2Moe else {
        throw MoEError.unsupported("shared-from-frequent makes a shared expert, which needs the qwen2-moe format")
      }
    }
    if o.calibratedScale && o.method != .partition {
      throw MoEError.invalid("calibrated-scale applies to the partition method only (got \(o.methodName))")
    }
    if o.dropSelect != .random && o.method != .drop && o.method != .noise {
      throw MoEError.invalid("drop-select \(o.dropSelect.caseName) applies to the drop and noise methods only (got \(o.methodName))")
    }
    try o.method.rule.validate(o, intermediate: I - o.sharedFromFrequent)
    try o.routerInit.rule.validate(o)
    let layers = try parseLayerSelection(o.layers, numLayers: d.numLayers)
    try o.format.check(sharedExpert: o.sharedExpert, renormalizes: o.renormalizes, moeLayers: layers, source: d,
                       path: checkpoint.path)
    guard o.maxShardBytes >= 1 << 10 else { throw MoEError.invalid("max shard size must be at least 1 KiB (got \(o.maxShardBytes))") }
    guard o.threads >= 0 && o.threads <= 4096 else {
      throw MoEError.invalid("threads is \(o.threads); use 0 (building overlaps writing), 1 (one thread) or up to 4096")
    }
    self.options = o
    moeLayers = layers
    expertSize = ExpertBuilder.expertSize(options: o, intermediate: I)
    sharedSize = o.sharedExpert ? (o.sharedFromFrequent > 0 ? o.sharedFromFrequent : I) : 0
    (layerData, calibrationRecord) = try DataDerived.collect(checkpoint: checkpoint, options: o)
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

  /// The upcycled model: the dense model with the output format's
  /// architecture and MoE layers.
  var outputDescription: ModelDescription {
    let d = checkpoint.description, o = options
    var out = d
    out.architecture = o.format.architecture
    out.qkvBias = d.qkvBias || out.hf.qkvBias(out.architecture)
    out.moe = MoEDescription(numExperts: o.numExperts, topK: o.topK, expertIntermediateSize: expertSize,
                             sharedExpertIntermediateSize: sharedSize, moeLayers: moeLayers)
    return out
  }

  private func makePlan() throws {
    let d = checkpoint.description, out = outputDescription
    let input = d.hf, output = out.hf
    var p: [PlannedTensor] = []
    /// A tensor of the dense model, under the output format's name.
    func copy(_ role: TensorRole, layer l: Int = 0, _ suffix: String = "weight") throws {
      let name = input.name(role, layer: l, suffix)
      let info = try checkpoint.source.require(name)
      p.append(PlannedTensor(name: output.name(role, layer: l, suffix), dtype: try outputDType(forSource: name),
                             shape: info.shape, producer: .copy(name)))
    }
    try copy(.embedding)
    for l in 0..<d.numLayers {
      let newDType = try outputDType(forSource: input.name(.ffnGate, layer: l))
      let qkv: [TensorRole] = [.query, .key, .value]
      for role in qkv {
        try copy(role, layer: l)
        if d.qkvBias { try copy(role, layer: l, "bias") }
      }
      try copy(.attentionOutput, layer: l)
      if out.qkvBias && !d.qkvBias {
        // The output format's attention always has q/k/v biases: zeros keep the function.
        for role in qkv {
          p.append(PlannedTensor(name: output.name(role, layer: l, "bias"), dtype: newDType,
                                 shape: role.shape(in: d, bias: true), producer: .zeros))
        }
      }
      try copy(.inputNorm, layer: l)
      try copy(.postNorm, layer: l)
      guard moeLayers[l] else {
        for role in [TensorRole.ffnGate, .ffnUp, .ffnDown] { try copy(role, layer: l) }
        continue
      }
      for t in output.moeTensors(out, layer: l) {
        let producer: Producer
        switch t.role {
        case .router: producer = .router(layer: l)
        case .expertGate, .expertUp, .expertDown: producer = .expert(layer: l, expert: t.expert, t.role.projection!)
        case .sharedGate, .sharedUp, .sharedDown: producer = .shared(layer: l, t.role.projection!)
        default: producer = .zeros
        }
        p.append(PlannedTensor(name: t.name, dtype: newDType, shape: t.shape, producer: producer))
      }
    }
    try copy(.finalNorm)
    if !d.tiedEmbeddings { try copy(.lmHead) }
    plan = p
  }

  // MARK: Producing tensor data

  private func builder(layer l: Int) throws -> ExpertBuilder {
    if let c = cachedLayer, c.index == l { return c.builder }
    cachedLayer = nil
    let d = checkpoint.description
    let n = d.hf.denseFFN(layer: l)
    let I = d.intermediateSize, H = d.hiddenSize
    let dense = DenseFFN(intermediate: I, hidden: H,
                         gate: try checkpoint.source.readFloat(n.gate, shape: [I, H]),
                         up: try checkpoint.source.readFloat(n.up, shape: [I, H]),
                         down: try checkpoint.source.readFloat(n.down, shape: [H, I]))
    for name in [n.gate, n.up, n.down] { checkpoint.source.release(name) }
    let b = try ExpertBuilder(options: options, layer: l, dense: dense, data: layerData[l])
    cachedLayer = (l, b)
    return b
  }

  package func produce(_ t: PlannedTensor, into dst: UnsafeMutablePointer<Float>) throws {
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
      let group = options.method.rule.routerGroup(options)
      let similarity = Self.maxRowSimilarity(r, rows: options.numExperts, width: t.shape[1], every: group)
      if similarity.isFinite && !(similarity <= routerSimilarity.value) { routerSimilarity = (similarity, l) }
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
    if output.hasSuffix(".gguf") { return try writeGGUF(to: output, started: start) }
    let target = try OutputDirectory(path: output, force: options.force, input: checkpoint.path)
    defer { target.discard() }
    return try target.writing { try write(into: target, progress: progress, started: start) }
  }

  private func write(into target: OutputDirectory, progress: Progress?, started start: Double) throws -> UpcycleReport {
    try FileSystem.checkFreeSpace(UInt64(plan.reduce(0) { $0 + $1.byteCount }), in: target.temporary, for: target.path)

    // Shards: consecutive tensors up to the size limit.
    let shards = CheckpointFiles.shards(plan.map(\.byteCount), maxBytes: options.maxShardBytes)
    let totalBytes = UInt64(plan.reduce(0) { $0 + $1.byteCount })
    var report = UpcycleReport()
    report.staleTemporaries = target.staleRemoved
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
    report.bytesWritten += try CheckpointFiles.writeJSON(try makeConfig(), FileSystem.join(target.temporary, "config.json"))
    report.bytesWritten += try CheckpointFiles.writeSideFiles(
      into: target.temporary, directory: checkpoint.directory, gguf: checkpoint.gguf, description: checkpoint.description)
    try target.commit()
    report.seconds = monotonicSeconds() - start
    report.peakRSS = peakResidentBytes()
    report.routerMaxSimilarity = routerSimilarity.value
    report.routerSimilarLayer = routerSimilarity.layer
    return report
  }

  // MARK: Config

  /// The dtype the experts are written in (nil when no layer is MoE).
  var expertDType: DType? {
    plan.first(where: { if case .expert = $0.producer { return true }; return false })?.dtype
  }

  /// config.json of the output: the output model's description (HFConfig.make)
  /// and the `moeupcycle` block recording how it was made.
  package func makeConfig() throws -> JSON {
    let d = checkpoint.description
    let o = options
    let dtype = expertDType ?? plan[0].dtype
    var c = try HFConfig.make(outputDescription, dtype: dtype,
                              routing: HFConfig.Routing(normTopKProb: o.renormalizes, routerAuxLossCoef: o.routerAuxLossCoef))
    var record: [(String, JSON)] = [
      ("version", .string(moeupcycleVersion)),
      ("source_architecture", .string(d.architecture.rawValue)),
      ("method", .string(o.methodName)),
      ("routing", .string(o.routingName)),
      ("seed", .unsigned(o.seed)),
      ("num_experts", .int(o.numExperts)),
      ("top_k", .int(o.topK)),
      ("expert_intermediate_size", .int(expertSize)),
      ("shared_expert", .bool(o.sharedExpert)),
      ("moe_layers", .array((0..<d.numLayers).filter { moeLayers[$0] }.map { .int($0) })),
    ]
    record += o.method.rule.record(o)
    record.append(("router_init", .string(o.routerInit.caseName)))
    record += o.routerInit.rule.record(o)
    if o.sharedFromFrequent > 0 { record.append(("shared_from_frequent", .int(o.sharedFromFrequent))) }
    record += calibrationRecord
    c.set("moeupcycle", .object(record))
    return c
  }
}

public let moeupcycleVersion = "0.8.0"

/// Produces items 0..<count in order into a ring of buffers, on a background thread when
/// there are two or more slots (inline otherwise). Errors surface from `next()` in order.
package final class ProductionPipeline: @unchecked Sendable {
  package final class Slot {
    package let floats: UnsafeMutablePointer<Float>
    package let encoded: UnsafeMutableRawPointer
    package var error: Error?
    init(maxElements: Int) {
      floats = .allocate(capacity: max(1, maxElements))
      encoded = .allocate(byteCount: max(4, maxElements * 4), alignment: 64)
    }
    deinit { floats.deallocate(); encoded.deallocate() }
  }

  private let slots: [Slot]
  private let empty: [CountingSemaphore]
  private let full: [CountingSemaphore]
  private let produce: (Int, Slot) throws -> Void
  private var thread: BackgroundThread?
  private var stop = false
  private var count = 0
  private var nextIndex = 0
  private var produced = 0

  init(slots n: Int, maxElements: Int, produce: @escaping (Int, Slot) throws -> Void) {
    slots = (0..<n).map { _ in Slot(maxElements: maxElements) }
    empty = (0..<n).map { _ in CountingSemaphore(1) }
    full = (0..<n).map { _ in CountingSemaphore(0) }
    self.produce = produce
  }

  package func start(count: Int) {
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
  package func next() throws -> Slot {
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

  package func release(_ slot: Slot) {
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

// MARK: - GGUF

extension Upcycler {
  /// Writes the upcycled model straight to one GGUF file (the path ends in
  /// .gguf): the exporter reads the planned tensors as they are built, so
  /// memory holds one layer's experts, as when writing safetensors. Matrices
  /// are stored in the output dtype (F32 when the source is quantized).
  package func writeGGUF(to output: String, started start: Double) throws -> UpcycleReport {
    let source = UpcycledTensors(self)
    let description = try HFConfig.describe(try makeConfig(), what: "the upcycled model of '\(checkpoint.path)'")
    let model = try Checkpoint(inMemory: source, description: description, from: checkpoint)
    var o = GGUFExportOptions()
    o.force = options.force
    o.type = expertDType ?? .f32
    let exported = try GGUFExport.write(model, to: output, options: o)
    cachedLayer = nil
    var report = UpcycleReport()
    report.bytesWritten = exported.bytesWritten
    report.tensorsWritten = exported.tensorsWritten
    report.shards = 1
    report.moeLayers = moeLayers.filter { $0 }.count
    report.seconds = monotonicSeconds() - start
    report.peakRSS = peakResidentBytes()
    report.routerMaxSimilarity = routerSimilarity.value
    report.routerSimilarLayer = routerSimilarity.layer
    return report
  }
}

/// The upcycler's planned tensors as a tensor source, each built when read.
package final class UpcycledTensors: TensorSource {
  private let upcycler: Upcycler
  private let index: [String: Int]
  package let tensorNames: [String]

  init(_ u: Upcycler) {
    upcycler = u
    tensorNames = u.plan.map(\.name)
    index = Dictionary(u.plan.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
  }

  package func info(_ name: String) -> TensorInfo? {
    guard let i = index[name] else { return nil }
    let t = upcycler.plan[i]
    return TensorInfo(name: t.name, dtype: t.dtype, shape: t.shape, elementCount: t.shape.reduce(1, *), byteCount: t.byteCount)
  }

  package func readFloat(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
    guard let i = index[name] else { throw MoEError.notFound("tensor '\(name)' is missing from the upcycled model") }
    let t = upcycler.plan[i]
    try upcycler.produce(t, into: dst)
    // Rounded to the planned dtype, as writing the checkpoint would store it.
    let count = t.shape.reduce(1, *)
    if t.dtype != .f32 {
      var bytes = [UInt8](repeating: 0, count: t.byteCount)
      bytes.withUnsafeMutableBytes { encodeFromFloat(t.dtype, src: dst, count: count, dst: $0.baseAddress!) }
      bytes.withUnsafeBytes { decodeToFloat(t.dtype, src: $0.baseAddress!, count: count, dst: dst) }
    }
  }

  package func release(_ name: String) {}
}

// MARK: - In memory

extension Upcycler {
  /// The upcycled model as a checkpoint held in memory (online upcycling): the
  /// tensors `write` would store, encoded in the same dtypes, with the
  /// description of the config.json it would write, and the dense model's
  /// path and tokenizer. Loading it gives the same model as writing the
  /// checkpoint and loading that, bit for bit. Each tensor's bytes are freed
  /// once the loader has consumed it.
  public func checkpointInMemory() throws -> Checkpoint {
    let source = MemoryTensorSource()
    let maxElements = plan.map { $0.shape.reduce(1, *) }.max() ?? 0
    let floats = try AlignedBuffer(floats: max(maxElements, 1), what: "an upcycled tensor")
    for t in plan {
      let count = t.shape.reduce(1, *)
      try produce(t, into: floats.pointer)
      var bytes = [UInt8](repeating: 0, count: t.byteCount)
      bytes.withUnsafeMutableBytes { encodeFromFloat(t.dtype, src: floats.pointer, count: count, dst: $0.baseAddress!) }
      source.add(TensorInfo(name: t.name, dtype: t.dtype, shape: t.shape, elementCount: count, byteCount: t.byteCount),
                 bytes: bytes)
    }
    cachedLayer = nil
    let config = try makeConfig()
    let description = try HFConfig.describe(config, what: "the upcycled model of '\(checkpoint.path)'")
    return try Checkpoint(inMemory: source, description: description, from: checkpoint)
  }
}

/// Tensors held in memory (encoded as a checkpoint file would hold them).
package final class MemoryTensorSource: TensorSource {
  package private(set) var tensorNames: [String] = []
  private var entries: [String: (info: TensorInfo, bytes: [UInt8])] = [:]

  package func add(_ info: TensorInfo, bytes: [UInt8]) {
    tensorNames.append(info.name)
    entries[info.name] = (info, bytes)
  }

  package func info(_ name: String) -> TensorInfo? { entries[name]?.info }

  package func readFloat(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
    guard let e = entries[name] else { throw MoEError.notFound("tensor '\(name)' is missing from the checkpoint") }
    guard !e.bytes.isEmpty || e.info.byteCount == 0 else {
      throw MoEError(.internal, "tensor '\(name)' of the upcycled model was read after it was released")
    }
    e.bytes.withUnsafeBytes { decodeToFloat(e.info.dtype, src: $0.baseAddress!, count: e.info.elementCount, dst: dst) }
  }

  package func release(_ name: String) {
    entries[name]?.bytes = []
  }
}

extension DecoderModel {
  /// The model at `path`; with `upcycle`, that checkpoint (a dense model) is
  /// upcycled in memory with these options and the MoE model is loaded
  /// (online upcycling: the same model as upcycling to disk and loading that).
  public convenience init(path: String, runtime: Runtime, options: ModelLoadOptions = ModelLoadOptions(),
                          upcycle: UpcycleOptions?) throws {
    var checkpoint = try Checkpoint(path: path)
    if let upcycle { checkpoint = try Upcycler(checkpoint: checkpoint, options: upcycle).checkpointInMemory() }
    try self.init(checkpoint: checkpoint, runtime: runtime, options: options)
  }
}
