// GGUF's tensor names for the architectures the library reads and writes, in
// both directions, and the GGML type ids of the storage types: GGUFSource and
// GGUFFile read with them and GGUFExport writes with them, so each is spelled
// here only.

enum GGUFLayout {
  /// The GGUF architecture (`general.architecture`) of a model.
  static func architecture(of a: Architecture) -> String {
    switch a {
    case .llama, .mistral, .mixtral: return "llama"
    case .qwen2: return "qwen2"
    case .qwen2Moe: return "qwen2moe"
    }
  }

  /// llama.cpp permutes the Q and K rows of `llama` models for its RoPE
  /// layout: stored row h*d + 2b + a holds HF row h*d + a*(d/2) + b.
  static func permutesQK(_ ggufArchitecture: String) -> Bool { ggufArchitecture == "llama" }

  /// Model-wide tensors: GGUF base name, HF base name.
  static let globalTensors: [(gguf: String, hf: String)] = [
    ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head"),
  ]

  /// Per-layer tensors (`blk.N.` + GGUF base, `model.layers.N.` + HF base), the router excepted.
  static let blockTensors: [(gguf: String, hf: String)] = [
    ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
    ("ffn_gate_shexp", "mlp.shared_expert.gate_proj"), ("ffn_up_shexp", "mlp.shared_expert.up_proj"),
    ("ffn_down_shexp", "mlp.shared_expert.down_proj"),
  ]

  /// The router: GGUF `ffn_gate_inp` [E, H]; HF block_sparse_moe.gate (Mixtral) or mlp.gate (Qwen2-MoE).
  static let router = "ffn_gate_inp"
  static func routerHF(_ ggufArchitecture: String) -> String {
    ggufArchitecture == "qwen2moe" ? "mlp.gate" : "block_sparse_moe.gate"
  }

  /// Qwen2-MoE's shared-expert gate: GGUF [H] (one dimension), HF [1, H].
  static let sharedExpertGate = (gguf: "ffn_gate_inp_shexp", hf: "mlp.shared_expert_gate")

  /// Expert stacks: GGUF [E, rows, cols] tensors holding every expert's projection.
  static let expertStacks: [(gguf: String, projection: Projection)] = [
    ("ffn_gate_exps", .gate), ("ffn_up_exps", .up), ("ffn_down_exps", .down),
  ]

  /// HF name of expert `e`'s projection in layer `l` (Mixtral w1/w3/w2 or Qwen2-MoE gate/up/down_proj).
  static func expertHF(_ ggufArchitecture: String, layer l: Int, expert e: Int, _ p: Projection) -> String {
    ModelDescription.moeTensorName(ggufArchitecture == "qwen2moe" ? .qwen2Moe : .mixtral, layer: l, p.layerWeight, expert: e)
  }

  /// A GGUF tensor name split into (layer or nil, base, suffix such as "weight").
  static func split(_ g: String) -> (layer: Int?, base: String, suffix: String)? {
    let parts = g.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    if parts.count == 2 { return (nil, parts[0], parts[1]) }
    guard parts.count == 4, parts[0] == "blk", let l = Int(parts[1]), l >= 0 else { return nil }
    return (l, parts[2], parts[3])
  }

  /// HF name of a GGUF tensor that is not an expert stack; nil for tensors
  /// with no HF counterpart (e.g. rope_freqs).
  static func hfName(_ g: String, architecture arch: String) -> String? {
    guard let (layer, base, suffix) = split(g) else { return nil }
    guard let l = layer else {
      return globalTensors.first { $0.gguf == base }.map { $0.hf + "." + suffix }
    }
    let p = ModelDescription.layerPrefix(l)
    if base == router { return p + routerHF(arch) + "." + suffix }
    if base == sharedExpertGate.gguf { return p + sharedExpertGate.hf + "." + suffix }
    return blockTensors.first { $0.gguf == base }.map { p + $0.hf + "." + suffix }
  }

  /// GGUF name of a model-wide or per-layer HF base name (no suffix).
  static func ggufName(hf base: String, layer: Int?) -> String? {
    guard let l = layer else { return globalTensors.first { $0.hf == base }.map(\.gguf) }
    return blockTensors.first { $0.hf == base }.map { "blk.\(l).\($0.gguf)" }
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
  init?(ggmlType: UInt32) {
    guard let d = DType.allCases.first(where: { $0.ggmlType == ggmlType }) else { return nil }
    self = d
  }
}
