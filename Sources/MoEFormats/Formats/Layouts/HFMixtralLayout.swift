// HF Mixtral: MoE layers under block_sparse_moe (router `gate`, experts'
// w1 = gate, w3 = up, w2 = down), every layer MoE, the top-k weights always
// renormalized, no shared expert; its config.json fields.

import MoESupport

package struct HFMixtralLayout: HFLayout {
  package var architectures: [Architecture] { [.mixtral] }

  package func ownPath(_ role: TensorRole, expert e: Int) -> String? {
    let b = "block_sparse_moe."
    switch role {
    case .router: return b + "gate"
    case .expertGate: return b + "experts.\(e).w1"
    case .expertDown: return b + "experts.\(e).w2"
    case .expertUp: return b + "experts.\(e).w3"
    case .expertsGateUp: return b + "experts.gate_up_proj"
    case .expertsDown: return b + "experts.down_proj"
    default: return nil
    }
  }

  /// File order within an expert: w1, w2, w3.
  package var expertOrder: [Projection] { [.gate, .down, .up] }
  package var alwaysRenormalizes: Bool { true }
  package var everyLayerMoE: Bool { true }

  package func describe(_ c: ConfigFields, architecture: Architecture, layers: Int, intermediate: inout Int) throws -> MoEDescription? {
    MoEDescription(numExperts: try c.int("num_local_experts"), topK: try c.int("num_experts_per_tok"),
                   expertIntermediateSize: intermediate, sharedExpertIntermediateSize: 0,
                   moeLayers: Array(repeating: true, count: max(layers, 0)))
  }

  /// The experts' size: Mixtral has no dense FFN.
  package func configIntermediateSize(_ d: ModelDescription) -> Int { d.moe?.expertIntermediateSize ?? 0 }

  package func configFields(_ d: ModelDescription, routing: HFConfig.Routing?) -> [(String, JSON?)] {
    guard let moe = d.moe, let routing else { return [] }
    return [
      ("sliding_window", .null),
      ("num_experts_per_tok", .int(moe.topK)),
      ("num_local_experts", .int(moe.numExperts)),
      ("output_router_logits", .bool(false)),
      ("router_aux_loss_coef", .float(routing.routerAuxLossCoef)),
      ("router_jitter_noise", .float(0)),
    ]
  }

  package var defaultRouting: HFConfig.Routing? { HFConfig.Routing(normTopKProb: true, routerAuxLossCoef: 0.02) }
}
