// GGUF `llama`: Llama, Mistral and Mixtral. Q/K rows are permuted for
// llama.cpp's RoPE; a Mixtral's experts are stacks read under Mixtral's HF
// names, and its `feed_forward_length` is the experts' size.

package struct GGUFLlamaLayout: GGUFArchitectureLayout {
  package var name: String { "llama" }
  package var architectures: [Architecture] { [.llama, .mistral, .mixtral] }
  package var permutesQK: Bool { true }
  package var hf: any HFLayout { HFMixtralLayout() }

  package func architecture(moe: Bool) -> Architecture { moe ? .mixtral : .llama }

  package func feedForwardLength(_ d: ModelDescription) -> Int { d.moe?.expertIntermediateSize ?? d.intermediateSize }
}
