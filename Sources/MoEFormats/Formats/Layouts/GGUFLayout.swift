// GGUF: the tensor names every GGUF architecture shares, in both
// directions, the hyperparameter keys they share (read into a
// ModelDescription and written back), and the GGML type ids of the storage
// types. Each architecture's own names and keys are in its file
// (GGUFLlamaLayout, GGUFQwen2Layout, GGUFQwen2MoeLayout); GGUFSource and
// GGUFFile read with them and GGUFExport writes with them.

import MoESupport

/// One GGUF architecture (`general.architecture`): which models it holds,
/// how their tensors are presented under HF names, and its own metadata keys.
package protocol GGUFArchitectureLayout: Sendable {
  /// `general.architecture`, and the prefix of its hyperparameter keys.
  var name: String { get }
  /// The HF architectures written as this architecture.
  var architectures: [Architecture] { get }
  /// Whether llama.cpp permutes the Q and K rows for its RoPE layout: stored
  /// row h*d + 2b + a holds HF row h*d + a*(d/2) + b.
  var permutesQK: Bool { get }
  /// The HF format whose names the tensors are read under.
  var hf: any HFLayout { get }
  /// Whether every layer has a shared expert (written with its sigmoid gate).
  var hasSharedExpert: Bool { get }
  /// Whether the output matrix is written even for tied embeddings (llama.cpp has no fallback).
  var writesTiedOutput: Bool { get }

  /// The HF architecture of a file of this architecture, with experts or without.
  func architecture(moe: Bool) -> Architecture
  /// Whether a file is MoE even without `expert_count`.
  var alwaysMoE: Bool { get }
  /// The experts' FFN size and the shared expert's, from the metadata.
  func expertSizes(_ m: GGUFKeys) throws -> (expert: Int, shared: Int)
  /// `feed_forward_length` of a model.
  func feedForwardLength(_ d: ModelDescription) -> Int
  /// The architecture's own MoE keys (after expert_count and expert_used_count).
  func moeMetadata(_ moe: MoEDescription) -> [(String, Int)]
  /// Refuses a model llama.cpp cannot run as this architecture.
  func checkExport(_ d: ModelDescription, path: String) throws
}

extension GGUFArchitectureLayout {
  package var permutesQK: Bool { false }
  package var hasSharedExpert: Bool { false }
  package var writesTiedOutput: Bool { false }
  package func architecture(moe: Bool) -> Architecture { architectures[0] }
  package var alwaysMoE: Bool { false }
  package func expertSizes(_ m: GGUFKeys) throws -> (expert: Int, shared: Int) { (try m.int("feed_forward_length"), 0) }
  package func feedForwardLength(_ d: ModelDescription) -> Int { d.intermediateSize }
  package func moeMetadata(_ moe: MoEDescription) -> [(String, Int)] { [] }
  package func checkExport(_ d: ModelDescription, path: String) throws {}
}

/// Typed access to one architecture's hyperparameter keys (`<arch>.<key>`), with errors naming the file.
package struct GGUFKeys {
  package let gguf: GGUFFile
  package let architecture: String
  package let what: String

  package func value(_ key: String) -> GGUFValue? { gguf.value("\(architecture).\(key)") }
  func optInt(_ key: String) -> Int? { value(key)?.intValue }
  package func int(_ key: String) throws -> Int {
    guard let v = value(key) else { throw MoEError.format("\(what): missing '\(architecture).\(key)'") }
    guard let i = v.intValue else { throw MoEError.format("\(what): '\(architecture).\(key)' is not an integer") }
    return i
  }
}

package enum GGUFLayout {
  // MARK: Tensor names

  /// Model-wide tensors: GGUF base name, role.
  static let globalRoles: [(gguf: String, role: TensorRole)] = [
    ("token_embd", .embedding), ("output_norm", .finalNorm), ("output", .lmHead),
  ]

  /// Per-layer tensors (`blk.N.` + GGUF base), the expert stacks excepted.
  package static let blockRoles: [(gguf: String, role: TensorRole)] = [
    ("attn_norm", .inputNorm), ("ffn_norm", .postNorm),
    ("attn_q", .query), ("attn_k", .key), ("attn_v", .value), ("attn_output", .attentionOutput),
    ("ffn_gate", .ffnGate), ("ffn_up", .ffnUp), ("ffn_down", .ffnDown),
    ("ffn_gate_inp", .router),
    ("ffn_gate_shexp", .sharedGate), ("ffn_up_shexp", .sharedUp), ("ffn_down_shexp", .sharedDown),
    // Qwen2-MoE's shared-expert gate: GGUF [H] (one dimension), HF [1, H].
    ("ffn_gate_inp_shexp", .sharedExpertGate),
  ]

  /// Expert stacks: GGUF [E, rows, cols] tensors holding every expert's projection.
  static let expertStacks: [(gguf: String, projection: Projection)] = [
    ("ffn_gate_exps", .gate), ("ffn_up_exps", .up), ("ffn_down_exps", .down),
  ]

  /// Model-wide tensors: GGUF base name, HF name without suffix.
  package static var globalTensors: [(gguf: String, hf: String)] {
    globalRoles.compactMap { g in HFDenseLayout.decoderPath(g.role).map { (g.gguf, $0) } }
  }

  /// Per-layer tensors every GGUF architecture names alike (norms, attention,
  /// dense FFN): GGUF base name, HF path within the layer.
  package static var blockTensors: [(gguf: String, hf: String)] {
    blockRoles.compactMap { b in HFDenseLayout.decoderPath(b.role).map { (b.gguf, $0) } }
  }

  /// The GGUF architecture of a model.
  package static func architecture(of a: Architecture) -> String { CheckpointLayouts.gguf(a).name }

  /// The layout of a GGUF architecture name; `llama`'s for one the library does not read.
  package static func layout(_ ggufArchitecture: String) -> any GGUFArchitectureLayout {
    CheckpointLayouts.gguf(named: ggufArchitecture) ?? GGUFLlamaLayout()
  }

  /// Whether llama.cpp permutes the Q and K rows of an architecture.
  package static func permutesQK(_ ggufArchitecture: String) -> Bool {
    CheckpointLayouts.gguf(named: ggufArchitecture)?.permutesQK ?? false
  }

  /// HF name of expert `e`'s projection in layer `l`.
  package static func expertHF(_ ggufArchitecture: String, layer l: Int, expert e: Int, _ p: Projection) -> String {
    layout(ggufArchitecture).hf.name(.expert(p), layer: l, expert: e)
  }

  /// A GGUF tensor name split into (layer or nil, base, suffix such as "weight").
  package static func split(_ g: String) -> (layer: Int?, base: String, suffix: String)? {
    let parts = g.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    if parts.count == 2 { return (nil, parts[0], parts[1]) }
    guard parts.count == 4, parts[0] == "blk", let l = Int(parts[1]), l >= 0 else { return nil }
    return (l, parts[2], parts[3])
  }

  /// The role of a GGUF tensor that is not an expert stack, with its layer and suffix.
  package static func role(of g: String) -> (layer: Int?, role: TensorRole, suffix: String)? {
    guard let (layer, base, suffix) = split(g) else { return nil }
    let table = layer == nil ? globalRoles : blockRoles
    return table.first { $0.gguf == base }.map { (layer, $0.role, suffix) }
  }

  /// HF name of a GGUF tensor that is not an expert stack; nil for tensors
  /// with no HF counterpart (e.g. rope_freqs).
  package static func hfName(_ g: String, architecture arch: String) -> String? {
    guard let (layer, role, suffix) = role(of: g) else { return nil }
    let hf = layout(arch).hf
    guard hf.path(role) != nil else { return nil }
    return hf.name(role, layer: layer ?? 0, suffix)
  }

  /// GGUF name (no suffix) of a model-wide (layer nil) or per-layer tensor.
  package static func ggufName(_ role: TensorRole, layer: Int?) -> String? {
    guard let l = layer else { return globalRoles.first { $0.role == role }.map(\.gguf) }
    return blockRoles.first { $0.role == role }.map { "blk.\(l).\($0.gguf)" }
  }

  /// GGUF name of a model-wide or per-layer HF path (no suffix).
  package static func ggufName(hf base: String, layer: Int?) -> String? {
    guard let role = TensorRole.allCases.first(where: { HFDenseLayout.decoderPath($0) == base }) else { return nil }
    return ggufName(role, layer: layer)
  }

  // MARK: Hyperparameters

  /// A GGUF file's metadata as a ModelDescription.
  package static func describe(_ g: GGUFFile) throws -> ModelDescription {
    let what = "'\(g.path)'"
    guard let archName = g.value("general.architecture")?.stringValue else {
      throw MoEError.format("\(what): no general.architecture")
    }
    guard let layout = CheckpointLayouts.gguf(named: archName) else {
      let names = CheckpointLayouts.gguf.map(\.name).joined(separator: ", ")
      throw MoEError.unsupported("\(what): GGUF architecture '\(archName)' is not supported (\(names))")
    }
    let keys = GGUFKeys(gguf: g, architecture: archName, what: what)
    let hidden = try keys.int("embedding_length")
    let heads = try keys.int("attention.head_count")
    let layers = try keys.int("block_count")
    guard heads > 0 else { throw MoEError.format("\(what): attention.head_count must be positive") }
    let tokens = g.value("tokenizer.ggml.tokens")?.arrayValue?.count
    let vocab = keys.optInt("vocab_size") ?? tokens ?? g.tensors.first(where: { $0.name == "token_embd.weight" }).map { $0.dims.last ?? 0 } ?? 0
    var moe: MoEDescription? = nil
    let experts = keys.optInt("expert_count") ?? 0
    if experts > 0 || layout.alwaysMoE {
      guard experts > 0, let used = keys.optInt("expert_used_count"), used >= 1, used <= experts else {
        throw MoEError.format("\(what): an MoE model needs \(archName).expert_count >= 1 and expert_used_count in 1...expert_count")
      }
      guard layers >= 0, layers <= ModelDescription.maxLayers else {
        throw MoEError.format("\(what): \(archName).block_count \(layers) is out of range")
      }
      let sizes = try layout.expertSizes(keys)
      moe = MoEDescription(numExperts: experts, topK: used, expertIntermediateSize: sizes.expert,
                           sharedExpertIntermediateSize: sizes.shared,
                           moeLayers: Array(repeating: true, count: layers))
    }
    let arch = layout.architecture(moe: moe != nil)
    let hasOutput = g.tensors.contains { $0.name == "output.weight" }
    return ModelDescription(
      architecture: arch, numLayers: layers, hiddenSize: hidden,
      intermediateSize: keys.optInt("feed_forward_length") ?? moe?.expertIntermediateSize ?? 0,
      numHeads: heads, numKVHeads: keys.optInt("attention.head_count_kv") ?? heads,
      headDim: keys.optInt("attention.key_length") ?? hidden / heads,
      vocabSize: vocab, maxPositionEmbeddings: keys.optInt("context_length") ?? 2048,
      ropeTheta: keys.value("rope.freq_base")?.doubleValue ?? 10000,
      rmsNormEps: keys.value("attention.layer_norm_rms_epsilon")?.doubleValue ?? 1e-5,
      tiedEmbeddings: !hasOutput, qkvBias: CheckpointLayouts.hf(arch).qkvBias(arch),
      bosTokenId: g.value("tokenizer.ggml.bos_token_id")?.intValue,
      eosTokenId: g.value("tokenizer.ggml.eos_token_id")?.intValue,
      moe: moe, sourceConfig: nil)
  }

  /// A model's hyperparameters as the metadata of GGUF architecture `layout`.
  package static func hyperparameters(_ d: ModelDescription, _ layout: any GGUFArchitectureLayout) -> [(String, GGUFOut)] {
    let arch = layout.name
    var meta: [(String, GGUFOut)] = []
    func u32(_ key: String, _ v: Int) { meta.append(("\(arch).\(key)", .u32(UInt32(clamping: v)))) }
    u32("context_length", d.maxPositionEmbeddings)
    u32("embedding_length", d.hiddenSize)
    u32("block_count", d.numLayers)
    u32("feed_forward_length", layout.feedForwardLength(d))
    u32("attention.head_count", d.numHeads)
    u32("attention.head_count_kv", d.numKVHeads)
    meta.append(("\(arch).rope.freq_base", .f32(Float(d.ropeTheta))))
    meta.append(("\(arch).attention.layer_norm_rms_epsilon", .f32(Float(d.rmsNormEps))))
    u32("rope.dimension_count", d.headDim)
    if d.headDim * d.numHeads != d.hiddenSize {
      u32("attention.key_length", d.headDim)
      u32("attention.value_length", d.headDim)
    }
    u32("vocab_size", d.vocabSize)
    if let m = d.moe {
      u32("expert_count", m.numExperts)
      u32("expert_used_count", m.topK)
      for (key, value) in layout.moeMetadata(m) { u32(key, value) }
    }
    return meta
  }
}

extension DType {
  /// GGML's type id of this storage type, as GGUF tensor infos hold it (read
  /// and written through this one table).
  var ggmlType: UInt32 {
    switch self {
    case .f32: return 0
    case .f16: return 1
    case .q4_0: return 2
    case .q4_1: return 3
    case .q8_0: return 8
    case .bf16: return 30
    }
  }

  /// The storage type of a GGML type id; nil for the types the library does not read.
  package init?(ggmlType: UInt32) {
    guard let d = DType.allCases.first(where: { $0.ggmlType == ggmlType }) else { return nil }
    self = d
  }
}
