// GGUF `llama`: Llama, Mistral and Mixtral. Q/K rows are permuted for
// llama.cpp's RoPE; a Mixtral's experts are stacks read under Mixtral's HF
// names, and its `feed_forward_length` is the experts' size.

struct GGUFLlamaLayout: GGUFArchitectureLayout {
  var name: String { "llama" }
  var architectures: [Architecture] { [.llama, .mistral, .mixtral] }
  var permutesQK: Bool { true }
  var hf: any HFLayout { HFMixtralLayout() }

  func architecture(moe: Bool) -> Architecture { moe ? .mixtral : .llama }

  func feedForwardLength(_ d: ModelDescription) -> Int { d.moe?.expertIntermediateSize ?? d.intermediateSize }
}
