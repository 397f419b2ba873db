// GGUF `qwen2moe`: Qwen2-MoE, every layer MoE with a shared expert and its
// sigmoid gate, experts stacked and read under Qwen2-MoE's HF names; the
// experts' sizes under their own keys. llama.cpp weighs the top-k experts by
// their softmax probabilities without renormalizing and has no tied-embedding
// fallback, so the output matrix is always written.

import MoESupport

package struct GGUFQwen2MoeLayout: GGUFArchitectureLayout {
  package var name: String { "qwen2moe" }
  package var architectures: [Architecture] { [.qwen2Moe] }
  package var hf: any HFLayout { HFQwen2MoeLayout() }
  package var hasSharedExpert: Bool { true }
  package var writesTiedOutput: Bool { true }
  package var alwaysMoE: Bool { true }

  static let expertSizeKey = "expert_feed_forward_length"
  static let sharedSizeKey = "expert_shared_feed_forward_length"

  package func expertSizes(_ m: GGUFKeys) throws -> (expert: Int, shared: Int) {
    (try m.int(Self.expertSizeKey), m.optInt(Self.sharedSizeKey) ?? 0)
  }

  package func moeMetadata(_ moe: MoEDescription) -> [(String, Int)] {
    [(Self.expertSizeKey, moe.expertIntermediateSize), (Self.sharedSizeKey, moe.sharedExpertIntermediateSize)]
  }

  package func checkExport(_ d: ModelDescription, path: String) throws {
    guard let m = d.moe else { return }
    guard m.sharedExpertIntermediateSize > 0 else {
      throw MoEError.unsupported("llama.cpp's qwen2moe has a shared expert in every layer; '\(path)' has none")
    }
    if try GGUFExport.renormalizes(d) {
      throw MoEError.unsupported("llama.cpp's qwen2moe weighs the top-k experts by their softmax probabilities without renormalizing; '\(path)' renormalizes them (norm_topk_prob), which its GGUF cannot express (upcycle with --routing softmax-topk, or the mixtral format)")
    }
  }
}
