// GGUF `qwen2`: dense Qwen2, stored with its q/k/v biases and Q/K rows as HF holds them.

struct GGUFQwen2Layout: GGUFArchitectureLayout {
  var name: String { "qwen2" }
  var architectures: [Architecture] { [.qwen2] }
  var hf: any HFLayout { HFDenseLayout() }
}
