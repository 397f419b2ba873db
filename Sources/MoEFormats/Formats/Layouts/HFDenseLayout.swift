// HF Llama, Mistral and Qwen2: the names of a decoder's embedding, norms,
// attention and dense FFN (which every HF format shares), and the dense
// architectures' config.json fields.

import MoESupport

package struct HFDenseLayout: HFLayout {
  package var architectures: [Architecture] { [.llama, .mistral, .qwen2] }

  /// The prefix of layer `l`'s tensor names.
  package static func layerPrefix(_ l: Int) -> String { "model.layers.\(l)." }

  /// The path of a tensor every HF decoder names alike; nil for MoE tensors.
  static func decoderPath(_ role: TensorRole) -> String? {
    switch role {
    case .embedding: return "model.embed_tokens"
    case .finalNorm: return "model.norm"
    case .lmHead: return "lm_head"
    case .inputNorm: return "input_layernorm"
    case .postNorm: return "post_attention_layernorm"
    case .query: return "self_attn.q_proj"
    case .key: return "self_attn.k_proj"
    case .value: return "self_attn.v_proj"
    case .attentionOutput: return "self_attn.o_proj"
    case .ffnGate: return "mlp.gate_proj"
    case .ffnUp: return "mlp.up_proj"
    case .ffnDown: return "mlp.down_proj"
    default: return nil
    }
  }

  package func qkvBias(_ a: Architecture) -> Bool { a == .qwen2 }

  package func check(_ c: ConfigFields, architecture: Architecture) throws {
    if c.json["attention_bias"]?.boolValue == true && (architecture == .llama || architecture == .mistral) {
      throw MoEError.unsupported("\(c.what): attention_bias=true (biases on all projections) is not supported")
    }
  }

  package func configFields(_ d: ModelDescription, routing: HFConfig.Routing?) -> [(String, JSON?)] {
    switch d.architecture {
    case .llama: return [("attention_bias", .bool(false)), ("mlp_bias", .bool(false))]
    case .mistral: return [("sliding_window", .null)]
    default:
      return [("use_sliding_window", .bool(false)), ("sliding_window", .null), ("max_window_layers", .int(d.numLayers))]
    }
  }
}
