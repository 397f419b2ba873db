import MoESupport

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
    let desc = try GGUFLayout.describe(g)
    let permute = GGUFLayout.permutesQK(g.value("general.architecture")?.stringValue ?? "")
    let source = try GGUFSource(gguf: g, heads: desc.numHeads, kvHeads: desc.numKVHeads, permuteQK: permute)
    try self.init(path: g.path, container: .gguf, description: desc, source: source, gguf: g, directory: nil)
  }

  /// A checkpoint built in memory from `origin` (online upcycling): its
  /// tensors in `source`, the origin's path, container and tokenizer.
  package convenience init(inMemory source: TensorSource, description: ModelDescription, from origin: Checkpoint) throws {
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
    let hf = d.hf
    try expect(hf.name(.embedding), TensorRole.embedding.shape(in: d))
    try expect(hf.name(.finalNorm), TensorRole.finalNorm.shape(in: d))
    if !d.tiedEmbeddings { try expect(hf.name(.lmHead), TensorRole.lmHead.shape(in: d)) }
    for l in 0..<d.numLayers {
      for (name, shape) in hf.attentionTensors(d, layer: l) { try expect(name, shape) }
      if let moe = d.moe, moe.moeLayers[l] {
        let routerName = CheckpointLayouts.moe(in: source, layer: l).name(.router, layer: l)
        guard let router = source.info(routerName) else { throw MoEError.notFound("'\(path)': layer \(l) has no router weight") }
        guard router.shape == [moe.numExperts, d.hiddenSize] else {
          throw MoEError.shape("'\(path)': router '\(router.name)' has shape \(router.shape), expected \([moe.numExperts, d.hiddenSize])")
        }
      } else {
        for role in [TensorRole.ffnGate, .ffnUp, .ffnDown] { try expect(hf.name(role, layer: l), role.shape(in: d)) }
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
