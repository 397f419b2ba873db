// HF Qwen2-MoE: MoE layers under mlp (router `gate`, experts'
// gate/up/down_proj, `shared_expert` and its sigmoid `shared_expert_gate`),
// dense layers listed in mlp_only_layers, q/k/v biases; its config.json
// fields. transformers 5 stores every MoE model's experts under mlp too,
// fused (`experts.gate_up_proj`, `experts.down_proj`).

import MoESupport

package struct HFQwen2MoeLayout: HFLayout {
  package var architectures: [Architecture] { [.qwen2Moe] }

  package func ownPath(_ role: TensorRole, expert e: Int) -> String? {
    let b = "mlp."
    switch role {
    case .router: return b + "gate"
    case .expertGate: return b + "experts.\(e).gate_proj"
    case .expertUp: return b + "experts.\(e).up_proj"
    case .expertDown: return b + "experts.\(e).down_proj"
    case .sharedGate: return b + "shared_expert.gate_proj"
    case .sharedUp: return b + "shared_expert.up_proj"
    case .sharedDown: return b + "shared_expert.down_proj"
    case .sharedExpertGate: return b + "shared_expert_gate"
    case .expertsGateUp: return b + "experts.gate_up_proj"
    case .expertsDown: return b + "experts.down_proj"
    default: return nil
    }
  }

  package var hasSharedExpert: Bool { true }
  /// Its config.json has no head_dim: transformers takes hidden_size / num_attention_heads.
  package var headDimFromHidden: Bool { true }
  package func renormalizes(_ c: JSON?) -> Bool { c?["norm_topk_prob"]?.boolValue ?? false }
  package func qkvBias(_ a: Architecture) -> Bool { true }

  package func describe(_ c: ConfigFields, architecture: Architecture, layers: Int, intermediate: inout Int) throws -> MoEDescription? {
    let step = try c.optInt("decoder_sparse_step") ?? 1
    let only = (c.json["mlp_only_layers"]?.arrayValue ?? []).compactMap { $0.intValue }
    let e = try c.int("num_experts")
    guard step >= 1 else { throw MoEError.format("\(c.what): decoder_sparse_step must be >= 1") }
    var flags: [Bool] = []
    for l in 0..<max(layers, 0) { flags.append(!only.contains(l) && e > 0 && (l + 1) % step == 0) }
    let moe = MoEDescription(numExperts: e, topK: try c.int("num_experts_per_tok"),
                             expertIntermediateSize: try c.int("moe_intermediate_size"),
                             sharedExpertIntermediateSize: try c.optInt("shared_expert_intermediate_size") ?? 0,
                             moeLayers: flags)
    if !flags.contains(false) && c.json["intermediate_size"] == nil { intermediate = 0 }
    return moe
  }

  package func configFields(_ d: ModelDescription, routing: HFConfig.Routing?) -> [(String, JSON?)] {
    guard let moe = d.moe, let routing else { return [] }
    return [
      ("use_sliding_window", .bool(false)),
      ("sliding_window", .null),
      ("max_window_layers", .int(d.numLayers)),
      ("qkv_bias", .bool(true)),
      ("decoder_sparse_step", .int(1)),
      ("moe_intermediate_size", .int(moe.expertIntermediateSize)),
      ("shared_expert_intermediate_size", .int(moe.sharedExpertIntermediateSize)),
      ("num_experts_per_tok", .int(moe.topK)),
      ("num_experts", .int(moe.numExperts)),
      ("norm_topk_prob", .bool(routing.normTopKProb)),
      ("output_router_logits", .bool(false)),
      ("router_aux_loss_coef", .float(routing.routerAuxLossCoef)),
      ("mlp_only_layers", .array(moe.moeLayers.indices.filter { !moe.moeLayers[$0] }.map { .int($0) })),
    ]
  }

  /// llama.cpp's qwen2moe does not renormalize.
  package var defaultRouting: HFConfig.Routing? { HFConfig.Routing(normTopKProb: false, routerAuxLossCoef: 0.001) }
}
