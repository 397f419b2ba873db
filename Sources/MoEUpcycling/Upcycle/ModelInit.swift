// Models built from scratch: a Llama (dense), Mixtral or Qwen2-MoE checkpoint
// of a chosen shape with seeded random weights and the tokenizer of an existing
// model, so small dense and MoE models can be pretrained here (the baselines of
// a scaling study: the same MoE trained from scratch, the dense model upcycled).
//
// The initialization is that of transformers' Llama-family models
// (PreTrainedModel._init_weights with initializer_range = initStd): every
// matrix (embedding, attention and FFN projections, routers, the shared-expert
// gate, the LM head when untied) is drawn from N(0, initStd^2); RMSNorm weights
// are 1; attention biases (Qwen2-MoE) are 0. Each tensor draws from its own
// stream, seeded by the seed and the tensor's name, so a tensor's values do not
// depend on which other tensors the model has: a dense model and an MoE model
// of the same shape and seed share their embedding and attention weights.

import MoESupport
import MoEFormats
import MoELayer
import MoEModel

/// The shape and initialization of a model built from scratch.
public struct ModelInitOptions: Sendable {
  public var hiddenSize = 256
  public var numLayers = 4
  public var numHeads = 4
  /// 0 = numHeads (no grouping).
  public var numKVHeads = 0
  /// 0 = hiddenSize / numHeads.
  public var headDim = 0
  /// The dense FFN's intermediate size, or each expert's. 0 = 8/3 of the
  /// hidden size, rounded up to a multiple of 64 (Llama's ratio).
  public var intermediateSize = 0
  /// 0 = a dense model (Llama); else routed experts per layer (every layer MoE).
  public var numExperts = 0
  public var topK = 2
  /// The MoE checkpoint layout (ignored for dense models).
  public var format: UpcycleOptions.Format = .mixtral
  /// Qwen2-MoE shared expert intermediate size; 0 = none for Mixtral, and
  /// intermediateSize for Qwen2-MoE (whose layers always have one).
  public var sharedExpertSize = 0
  public var maxPositions = 2048
  public var ropeTheta = 10000.0
  public var rmsNormEps = 1e-5
  public var tiedEmbeddings = true
  /// Standard deviation of every initialized matrix (config's initializer_range).
  public var initStd = 0.02
  public var routing: UpcycleOptions.Routing = .softmaxTopKRenorm
  /// Recorded in the config (router_aux_loss_coef).
  public var routerAuxLossCoef = 0.02
  /// f32 or bf16.
  public var dtype: DType = .f32
  public var seed: UInt64 = 0
  public var force = false
  public var maxShardBytes: UInt64 = 4 << 30

  public init() {}

  /// The intermediate size after defaults.
  public var resolvedIntermediateSize: Int {
    intermediateSize > 0 ? intermediateSize : (8 * hiddenSize / 3 + 63) / 64 * 64
  }
}

/// What writing a model from scratch did.
public struct ModelInitReport: Sendable {
  public var parameters = 0
  public var activeParameters = 0
  public var bytesWritten: UInt64 = 0
  public var shards = 0
  public var seconds = 0.0
}

public enum ModelInit {
  /// Most routed experts (as for upcycling).
  public static let maxExperts = UpcycleOptions.maxExperts

  /// The description of the model `o` builds, with the vocabulary (size and
  /// bos/eos ids) of `vocabulary`, the model whose tokenizer it takes.
  public static func description(_ o: ModelInitOptions, vocabulary v: ModelDescription) throws -> ModelDescription {
    func require(_ ok: Bool, _ message: @autoclosure () -> String) throws {
      if !ok { throw MoEError.invalid(message()) }
    }
    try require(o.hiddenSize > 0 && o.hiddenSize <= 1 << 16, "hidden size must be in 1...65536 (got \(o.hiddenSize))")
    try require(o.numLayers > 0 && o.numLayers <= 1024, "layers must be in 1...1024 (got \(o.numLayers))")
    try require(o.numHeads > 0 && o.numHeads <= 1024, "heads must be in 1...1024 (got \(o.numHeads))")
    let kvHeads = o.numKVHeads == 0 ? o.numHeads : o.numKVHeads
    try require(kvHeads > 0 && o.numHeads % kvHeads == 0,
                "heads (\(o.numHeads)) must be a multiple of KV heads (\(kvHeads))")
    let headDim = o.headDim == 0 ? o.hiddenSize / o.numHeads : o.headDim
    try require(o.headDim != 0 || o.hiddenSize % o.numHeads == 0,
                "hidden size \(o.hiddenSize) is not a multiple of \(o.numHeads) heads; give the head dimension")
    try require(headDim > 0 && headDim % 2 == 0 && headDim <= 1024,
                "head dimension must be even and in 2...1024 (got \(headDim)); rotary embeddings need pairs")
    let ffn = o.resolvedIntermediateSize
    try require(ffn > 0 && ffn <= 1 << 20, "intermediate size must be in 1...1048576 (got \(o.intermediateSize))")
    try require(o.maxPositions > 0 && o.maxPositions <= 1 << 24, "max positions must be in 1...16777216 (got \(o.maxPositions))")
    try require(o.ropeTheta.isFinite && o.ropeTheta > 0, "rope theta must be positive and finite (got \(o.ropeTheta))")
    try require(o.rmsNormEps.isFinite && o.rmsNormEps > 0, "RMSNorm epsilon must be positive and finite (got \(o.rmsNormEps))")
    try require(o.initStd.isFinite && o.initStd > 0 && o.initStd <= 1, "init std must be in (0, 1] (got \(o.initStd))")
    try require(o.routerAuxLossCoef.isFinite && o.routerAuxLossCoef >= 0,
                "aux loss coefficient must be finite and >= 0 (got \(o.routerAuxLossCoef))")
    guard o.dtype == .f32 || o.dtype == .bf16 else {
      throw MoEError.unsupported("dtype \(o.dtype.name) is not supported for a new model; use f32 or bf16")
    }
    try require(o.maxShardBytes >= 1 << 10 && o.maxShardBytes <= 1 << 40,
                "max shard size must be in 1 KiB...1 TiB (got \(o.maxShardBytes) bytes)")

    var d = ModelDescription(
      architecture: .llama, numLayers: o.numLayers, hiddenSize: o.hiddenSize, intermediateSize: ffn,
      numHeads: o.numHeads, numKVHeads: kvHeads, headDim: headDim, vocabSize: v.vocabSize,
      maxPositionEmbeddings: o.maxPositions, ropeTheta: o.ropeTheta, rmsNormEps: o.rmsNormEps,
      tiedEmbeddings: o.tiedEmbeddings, qkvBias: false, bosTokenId: v.bosTokenId, eosTokenId: v.eosTokenId,
      moe: nil, sourceConfig: nil)
    if o.numExperts > 0 {
      try require(o.numExperts <= maxExperts, "experts must be in 0...\(maxExperts) (got \(o.numExperts)); 0 builds a dense model")
      try require(o.topK >= 1 && o.topK <= o.numExperts, "top-k must be in 1...\(o.numExperts) (the number of experts), got \(o.topK)")
      var shared = 0
      d.architecture = o.format.architecture
      d.qkvBias = d.hf.qkvBias(d.architecture)
      try o.format.check(sharedExpert: o.sharedExpertSize != 0, renormalizes: o.routing != .softmaxTopK)
      if d.hf.hasSharedExpert {
        shared = o.sharedExpertSize > 0 ? o.sharedExpertSize : ffn
        try require(shared <= 1 << 20, "shared expert size must be at most 1048576 (got \(shared))")
      }
      d.moe = MoEDescription(numExperts: o.numExperts, topK: o.topK, expertIntermediateSize: ffn,
                             sharedExpertIntermediateSize: shared, moeLayers: Array(repeating: true, count: o.numLayers))
    } else {
      try require(o.numExperts == 0, "experts must be in 0...\(maxExperts) (got \(o.numExperts)); 0 builds a dense model")
    }
    try d.validate(what: "the new model")
    return d
  }

  /// How one tensor is initialized.
  package enum Fill { case normal, ones, zeros }

  /// Every tensor of a model described by `d`, in checkpoint order, with its fill.
  package static func tensors(_ d: ModelDescription) -> [(name: String, shape: [Int], fill: Fill)] {
    func fill(_ name: String) -> Fill {
      if name.hasSuffix("norm.weight") { return .ones }
      if name.hasSuffix(".bias") { return .zeros }
      return .normal
    }
    return d.hf.tensors(d).map { ($0.name, $0.shape, fill($0.name)) }
  }

  /// The random stream of the tensor `name`: the seed and a 64-bit FNV-1a hash of the name.
  package static func stream(seed: UInt64, name: String) -> Rng {
    Rng(seed: seed, stream: [0x696E_6974, fnv1a64(name.utf8)])
  }

  /// Writes a model of the shape `o` describes, with the tokenizer (and its
  /// vocabulary) of `tokenizerSource` (an HF directory or a .gguf file whose
  /// tokenizer this library reads), as an HF checkpoint directory at `path`:
  /// written under a temporary name and renamed into place; an existing `path`
  /// is refused unless `o.force`. Memory use is bounded by a small buffer, not
  /// by the model.
  public static func write(to path: String, tokenizerSource: String, options o: ModelInitOptions) throws -> ModelInitReport {
    let start = monotonicSeconds()
    let source = try Checkpoint(path: tokenizerSource)
    do {
      _ = try BPETokenizer.load(checkpoint: source)
    } catch let e as MoEError where e.kind == .notFound || e.kind == .unsupported {
      throw MoEError(e.kind, "'\(tokenizerSource)' has no tokenizer this library can use: \(e.message)")
    }
    let d = try description(o, vocabulary: source.description)
    let list = tensors(d)
    let seed = o.seed, std = Float(o.initStd)
    let writerTensors = list.map { t in
      ModelWriter.Tensor(name: t.name, shape: t.shape) { stream in
        let count = t.shape.reduce(1, *)
        let chunk = 1 << 14
        var rng = ModelInit.stream(seed: seed, name: t.name)
        var values = [Float](repeating: 0, count: min(chunk, count))
        var done = 0
        while done < count {
          let n = min(chunk, count - done)
          switch t.fill {
          case .ones: for i in 0..<n { values[i] = 1 }
          case .zeros: for i in 0..<n { values[i] = 0 }
          case .normal: for i in 0..<n { values[i] = Float(rng.normal()) * std }
          }
          try values.withUnsafeBufferPointer { try stream.write(floats: $0.baseAddress!, count: n) }
          done += n
        }
      }
    }
    var config = try HFConfig.make(d, dtype: o.dtype, routing: d.moe == nil ? nil
      : HFConfig.Routing(normTopKProb: o.routing != .softmaxTopK, routerAuxLossCoef: o.routerAuxLossCoef))
    config.set("initializer_range", .float(o.initStd))
    var options = UpcycleOptions()
    options.routing = o.routing
    config.set("moeupcycle", .object([
      ("version", .string(moeupcycleVersion)),
      ("method", .string("init")),
      ("seed", .unsigned(o.seed)),
      ("init_std", .float(o.initStd)),
      ("routing", .string(options.routingName)),
      ("tokenizer_source", .string(tokenizerSource)),
    ]))

    let counts = d.parameterCounts()
    var report = ModelInitReport()
    report.parameters = counts.total
    report.activeParameters = counts.active
    let target = try OutputDirectory(path: path, force: o.force, input: tokenizerSource)
    defer { target.discard() }
    try target.writing {
      try FileSystem.checkFreeSpace(UInt64(counts.total) * UInt64(o.dtype.elementBytes), in: target.temporary, for: target.path)
      try ModelWriter.writeShards(writerTensors, dtype: o.dtype, into: target.temporary, maxShardBytes: Int(o.maxShardBytes))
      try CheckpointFiles.writeJSON(config, FileSystem.join(target.temporary, "config.json"))
      try CheckpointFiles.writeSideFiles(into: target.temporary, directory: source.directory, gguf: source.gguf, description: d)
      try target.commit()
    }
    let bytes = list.map { $0.shape.reduce(1, *) * o.dtype.elementBytes }
    report.shards = CheckpointFiles.shards(bytes, maxBytes: o.maxShardBytes).count
    report.bytesWritten = UInt64(bytes.reduce(0, +))
    report.seconds = monotonicSeconds() - start
    return report
  }
}
