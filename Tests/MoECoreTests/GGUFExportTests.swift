@testable import MoESupport
@testable import MoEFormats
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// GGML block quantizers against the decoders, and GGUF's names in both directions.
@Suite struct GGUFExportTests {
  static func blocks(_ seed: UInt64, count: Int = 32 * 16) -> [Float] {
    var r = Rng(seed: seed, stream: [7])
    return (0..<count).map { i in Float(r.normal()) * (i % 64 < 32 ? 1 : 1e-3) }
  }

  /// Encoded then decoded, every value is within half a step of itself (Q4_0: one step, as its
  /// levels -8...7 clip the side opposite the largest magnitude).
  @Test(arguments: [DType.q8_0, .q4_0, .q4_1])
  func quantizedBlocksRoundTripWithinHalfAStep(dtype: DType) {
    let x = Self.blocks(UInt64(dtype.rawValue))
    var bytes = [UInt8](repeating: 0, count: x.count / 32 * dtype.blockBytes)
    var back = [Float](repeating: .nan, count: x.count)
    x.withUnsafeBufferPointer { src in
      bytes.withUnsafeMutableBytes { encodeFromFloat(dtype, src: src.baseAddress!, count: x.count, dst: $0.baseAddress!) }
    }
    bytes.withUnsafeBytes { b in back.withUnsafeMutableBufferPointer { decodeToFloat(dtype, src: b.baseAddress!, count: x.count, dst: $0.baseAddress!) } }
    for b in 0..<(x.count / 32) {
      let block = x[(32 * b)..<(32 * b + 32)]
      let lo = block.min()!, hi = block.max()!, amax = block.map(abs).max()!
      // The step: amax/127 (Q8_0), amax/8 (Q4_0), (max-min)/15 (Q4_1); f16 rounding of the scale adds 0.1%.
      let step = dtype == .q8_0 ? amax / 127 : dtype == .q4_0 ? amax / 8 : (hi - lo) / 15
      for j in 0..<32 {
        let err = abs(back[32 * b + j] - x[32 * b + j])
        let bound = (dtype == .q4_0 ? 1.0 : 0.5) * step * 1.01 + amax * 2e-3
        #expect(err <= bound, "block \(b) value \(j): error \(err), step \(step)")
      }
    }
  }

  @Test func nonFiniteValuesDoNotTrap() {
    var x = [Float](repeating: 1, count: 32)
    x[3] = .nan
    x[5] = .infinity
    for dtype in [DType.q8_0, .q4_0, .q4_1] {
      var bytes = [UInt8](repeating: 0, count: dtype.blockBytes)
      x.withUnsafeBufferPointer { s in bytes.withUnsafeMutableBytes { encodeFromFloat(dtype, src: s.baseAddress!, count: 32, dst: $0.baseAddress!) } }
    }
  }

  @Test func namesRoundTrip() {
    for arch in ["llama", "qwen2moe"] {
      for (g, h) in GGUFLayout.blockTensors {
        #expect(GGUFLayout.hfName("blk.3.\(g).weight", architecture: arch) == "model.layers.3.\(h).weight")
        #expect(GGUFLayout.ggufName(hf: h, layer: 3) == "blk.3.\(g)")
      }
      for (g, h) in GGUFLayout.globalTensors {
        #expect(GGUFLayout.hfName("\(g).weight", architecture: arch) == "\(h).weight")
        #expect(GGUFLayout.ggufName(hf: h, layer: nil) == g)
      }
    }
    #expect(GGUFLayout.hfName("blk.0.ffn_gate_inp.weight", architecture: "llama") == "model.layers.0.block_sparse_moe.gate.weight")
    #expect(GGUFLayout.hfName("blk.0.ffn_gate_inp.weight", architecture: "qwen2moe") == "model.layers.0.mlp.gate.weight")
    #expect(GGUFLayout.expertHF("llama", layer: 2, expert: 1, .up) == "model.layers.2.block_sparse_moe.experts.1.w3.weight")
    #expect(GGUFLayout.expertHF("qwen2moe", layer: 2, expert: 1, .down) == "model.layers.2.mlp.experts.1.down_proj.weight")
    #expect(GGUFLayout.hfName("rope_freqs.weight", architecture: "llama") == nil)
    #expect(GGUFLayout.hfName("blk.x.attn_q.weight", architecture: "llama") == nil)
  }

  /// llama.cpp's Q/K order: the export's permutation is the reader's inverse.
  @Test func qkPermutationIsTheReadersInverse() {
    let heads = 3, d = 8, cols = 5
    let w = (0..<(heads * d * cols)).map(Float.init)
    let stored = GGUFExport.permuteRows(w, heads: heads, rows: heads * d)
    for h in 0..<heads {
      for b in 0..<(d / 2) {
        for a in 0..<2 {
          let s = h * d + 2 * b + a, hf = h * d + a * (d / 2) + b
          #expect(Array(stored[(s * cols)..<((s + 1) * cols)]) == Array(w[(hf * cols)..<((hf + 1) * cols)]))
        }
      }
    }
  }
}
