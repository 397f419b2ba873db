// GGUF `qwen2`: dense Qwen2, stored with its q/k/v biases and Q/K rows as HF holds them.

package struct GGUFQwen2Layout: GGUFArchitectureLayout {
  package var name: String { "qwen2" }
  package var architectures: [Architecture] { [.qwen2] }
  package var hf: any HFLayout { HFDenseLayout() }
}
