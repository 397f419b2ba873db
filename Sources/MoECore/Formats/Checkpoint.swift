/// An opened checkpoint: its description and read access to its tensors.
public final class Checkpoint {
  public enum Container: String { case safetensors, gguf }

  public let path: String
  public let container: Container
  public let description: ModelDescription
  public let source: TensorSource
  /// The GGUF file, for tokenizer metadata (nil for HF sources).
  public let gguf: GGUFFile?
  /// The HF directory (nil for GGUF sources).
  public let directory: String?

  /// Opens an HF model directory or a .gguf file.
  public convenience init(path: String) throws {
    guard FileSystem.exists(path) else { throw MoEError.notFound("'\(path)' does not exist") }
    if FileSystem.isDirectory(path) {
      let configPath = FileSystem.join(path, "config.json")
      guard FileSystem.exists(configPath) else {
        throw MoEError.notFound("'\(path)' is a directory without config.json (expected an HF model directory)")
      }
      let config = try JSONParser.parse(try FileSystem.readAll(configPath, limit: 16 << 20), what: "'\(configPath)'")
      let desc = try HFConfig.describe(config, what: "'\(configPath)'")
      let st = try SafetensorsSource(directory: path)
      try self.init(path: path, container: .safetensors, description: desc, source: st, gguf: nil, directory: path)
    } else {
      try self.init(gguf: try GGUFFile(path: path))
    }
  }

  /// A parsed GGUF file (from disk or memory) as a checkpoint.
  public convenience init(gguf g: GGUFFile) throws {
    let desc = try GGUFConfig.describe(g)
    let permute = GGUFLayout.permutesQK(g.value("general.architecture")?.stringValue ?? "")
    let source = try GGUFSource(gguf: g, heads: desc.numHeads, kvHeads: desc.numKVHeads, permuteQK: permute)
    try self.init(path: g.path, container: .gguf, description: desc, source: source, gguf: g, directory: nil)
  }

  /// A checkpoint built in memory from `origin` (online upcycling): its
  /// tensors in `source`, the origin's path, container and tokenizer.
  convenience init(inMemory source: TensorSource, description: ModelDescription, from origin: Checkpoint) throws {
    try self.init(path: origin.path, container: origin.container, description: description, source: source,
                  gguf: origin.gguf, directory: origin.directory)
  }

  private init(path: String, container: Container, description: ModelDescription, source: TensorSource,
               gguf: GGUFFile?, directory: String?) throws {
    self.path = path
    self.container = container
    self.description = description
    self.source = source
    self.gguf = gguf
    self.directory = directory
    try description.validate(what: "'\(path)'")
    try checkTensors()
  }

  /// Every tensor the description requires is present with the right shape.
  private func checkTensors() throws {
    let d = description
    func expect(_ name: String, _ shape: [Int]) throws {
      let i = try source.require(name)
      guard i.shape == shape else {
        throw MoEError.shape("'\(path)': tensor '\(name)' has shape \(i.shape), expected \(shape)")
      }
    }
    try expect("model.embed_tokens.weight", d.embedShape)
    try expect("model.norm.weight", [d.hiddenSize])
    if !d.tiedEmbeddings { try expect("lm_head.weight", d.embedShape) }
    for l in 0..<d.numLayers {
      for (name, shape) in d.attentionTensors(layer: l) { try expect(name, shape) }
      if let moe = d.moe, moe.moeLayers[l] {
        let p = ModelDescription.layerPrefix(l)
        let router = source.info(p + "block_sparse_moe.gate.weight") ?? source.info(p + "mlp.gate.weight")
        guard let router else { throw MoEError.notFound("'\(path)': layer \(l) has no router weight") }
        guard router.shape == [moe.numExperts, d.hiddenSize] else {
          throw MoEError.shape("'\(path)': router '\(router.name)' has shape \(router.shape), expected \([moe.numExperts, d.hiddenSize])")
        }
      } else {
        let n = d.denseFFNNames(layer: l)
        try expect(n.gate, [d.intermediateSize, d.hiddenSize])
        try expect(n.up, [d.intermediateSize, d.hiddenSize])
        try expect(n.down, [d.hiddenSize, d.intermediateSize])
      }
    }
  }

  /// Total parameters stored, and parameters used per token.
  public func parameterCounts() -> (total: Int, active: Int) {
    var total = 0
    for n in source.tensorNames { total += source.info(n)?.elementCount ?? 0 }
    let (descTotal, descActive) = description.parameterCounts()
    return (total, total - (descTotal - descActive))
  }

  /// Tensor counts per dtype and the dtype holding most parameters.
  public func dtypeSummary() -> (dominant: DType, summary: String) {
    var counts: [DType: Int] = [:]
    var params: [DType: Int] = [:]
    for n in source.tensorNames {
      guard let i = source.info(n) else { continue }
      counts[i.dtype, default: 0] += 1
      params[i.dtype, default: 0] += i.elementCount
    }
    let order = DType.allCases.filter { counts[$0] != nil }.sorted { params[$0]! > params[$1]! }
    let summary = order.map { "\($0.name):\(counts[$0]!)" }.joined(separator: " ")
    return (order.first ?? .f32, summary)
  }

  public var dataBytes: Int {
    var total = 0
    for n in source.tensorNames { total += source.info(n)?.byteCount ?? 0 }
    return total
  }
}

/// GGUF metadata -> ModelDescription.
enum GGUFConfig {
  static func describe(_ g: GGUFFile) throws -> ModelDescription {
    let what = "'\(g.path)'"
    guard let archName = g.value("general.architecture")?.stringValue else {
      throw MoEError.format("\(what): no general.architecture")
    }
    var arch: Architecture
    switch archName {
    case "llama": arch = .llama
    case "qwen2": arch = .qwen2
    case "qwen2moe": arch = .qwen2Moe
    default:
      throw MoEError.unsupported("\(what): GGUF architecture '\(archName)' is not supported (llama, qwen2, qwen2moe)")
    }
    func int(_ key: String) throws -> Int {
      guard let v = g.value("\(archName).\(key)") else { throw MoEError.format("\(what): missing '\(archName).\(key)'") }
      guard let i = v.intValue else { throw MoEError.format("\(what): '\(archName).\(key)' is not an integer") }
      return i
    }
    func optInt(_ key: String) -> Int? { g.value("\(archName).\(key)")?.intValue }
    let hidden = try int("embedding_length")
    let heads = try int("attention.head_count")
    let layers = try int("block_count")
    guard heads > 0 else { throw MoEError.format("\(what): attention.head_count must be positive") }
    let tokens = g.value("tokenizer.ggml.tokens")?.arrayValue?.count
    let vocab = optInt("vocab_size") ?? tokens ?? g.tensors.first(where: { $0.name == "token_embd.weight" }).map { $0.dims.last ?? 0 } ?? 0
    var moe: MoEDescription? = nil
    let experts = optInt("expert_count") ?? 0
    if experts > 0 || arch == .qwen2Moe {
      guard experts > 0, let used = optInt("expert_used_count"), used >= 1, used <= experts else {
        throw MoEError.format("\(what): an MoE model needs \(archName).expert_count >= 1 and expert_used_count in 1...expert_count")
      }
      guard layers >= 0, layers <= ModelDescription.maxLayers else {
        throw MoEError.format("\(what): \(archName).block_count \(layers) is out of range")
      }
      if arch == .llama { arch = .mixtral }
      let expertSize = arch == .qwen2Moe ? try int("expert_feed_forward_length") : try int("feed_forward_length")
      moe = MoEDescription(numExperts: experts, topK: used, expertIntermediateSize: expertSize,
                           sharedExpertIntermediateSize: optInt("expert_shared_feed_forward_length") ?? 0,
                           moeLayers: Array(repeating: true, count: layers))
    }
    let hasOutput = g.tensors.contains { $0.name == "output.weight" }
    return ModelDescription(
      architecture: arch, numLayers: layers, hiddenSize: hidden,
      intermediateSize: optInt("feed_forward_length") ?? moe?.expertIntermediateSize ?? 0,
      numHeads: heads, numKVHeads: optInt("attention.head_count_kv") ?? heads,
      headDim: optInt("attention.key_length") ?? hidden / heads,
      vocabSize: vocab, maxPositionEmbeddings: optInt("context_length") ?? 2048,
      ropeTheta: g.value("\(archName).rope.freq_base")?.doubleValue ?? 10000,
      rmsNormEps: g.value("\(archName).attention.layer_norm_rms_epsilon")?.doubleValue ?? 1e-5,
      tiedEmbeddings: !hasOutput, qkvBias: arch == .qwen2 || arch == .qwen2Moe,
      bosTokenId: g.value("tokenizer.ggml.bos_token_id")?.intValue,
      eosTokenId: g.value("tokenizer.ggml.eos_token_id")?.intValue,
      moe: moe, sourceConfig: nil)
  }
}
