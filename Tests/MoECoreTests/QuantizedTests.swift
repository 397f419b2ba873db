import Testing
@testable import MoESupport
@testable import MoERuntime
@testable import MoELayer

/// Quantized weights (Q8_0, Q4_0, Q4_1): the packed row layout against GGUF
/// dequantization, and every product path against the Double reference of
/// the math they all compute.
@Suite struct QuantizedTests {
  static let types: [DType] = [.q8_0, .q4_0, .q4_1]

  /// Deterministic values with a spread of magnitudes per block (and an
  /// all-zero block, whose scale is 0).
  static func values(_ count: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { i in
      if i / 32 % 7 == 3 { return 0 }
      let scale = Float(1 << (i / 32 % 5)) * 0.05
      return (Float(rng.next() % 20001) / 10000 - 1) * scale
    }
  }

  @Test(arguments: types)
  func packedRowsDequantizeAsGGUFDoes(_ dtype: DType) {
    // 3 blocks per row: the last pair has a missing block.
    for cols in [32, 96, 576] {
      let rows = 5
      let blocks = QuantizedReference.blocks(dtype, Self.values(rows * cols, seed: 7), rows: rows, cols: cols)
      var expected = [Float](repeating: 0, count: rows * cols)
      blocks.withUnsafeBytes { b in
        expected.withUnsafeMutableBufferPointer { e in
          decodeToFloat(dtype, src: b.baseAddress!, count: rows * cols, dst: e.baseAddress!)
        }
      }
      let packed = QuantizedReference.pack(dtype, blocks: blocks, rows: rows, cols: cols)
      #expect(packed.count == rows * dtype.rowBytes(cols: cols))
      #expect(dtype.rowBytes(cols: cols) % 64 == 0)
      let back = QuantizedReference.unpack(dtype, packed: packed, rows: rows, cols: cols)
      #expect(back.map(\.bitPattern) == expected.map(\.bitPattern), "\(dtype.name) cols \(cols)")
    }
  }

  @Test(arguments: types)
  func everyPathComputesTheReference(_ dtype: DType) {
    let paths = QuantKernels.allCases.filter(\.runsHere)
    #expect(paths.contains(.portable))
    for (n, rows, cols) in [(1, 13, 64), (1, 7, 96), (3, 9, 576), (5, 4, 1536), (16, 6, 160)] {
      let blocks = QuantizedReference.blocks(dtype, Self.values(rows * cols, seed: UInt64(rows * cols)), rows: rows,
                                             cols: cols)
      let x = Self.values(n * cols, seed: 99).map { $0 * 3 - 0.01 }
      let expected = QuantizedReference.expected(dtype, blocks: blocks, rows: rows, cols: cols, x: x, n: n)
      for path in paths {
        let got = QuantizedReference.product(dtype, blocks: blocks, rows: rows, cols: cols, x: x, n: n, kernels: path,
                                             walk: .sequential)
        // The integer sums are exact; only the float sum over blocks differs in order.
        let scale = expected.map { abs($0) }.max() ?? 1
        let worst = zip(got, expected).map { abs(Double($0) - $1) }.max() ?? 0
        #expect(worst <= 1e-5 * max(scale, 1e-3), "\(dtype.name) \(path) n \(n) rows \(rows) cols \(cols): \(worst)")
        // Four rows side by side add each row's products in the same order.
        let hinted = QuantizedReference.product(dtype, blocks: blocks, rows: rows, cols: cols, x: x, n: n,
                                                kernels: path, walk: .hinted)
        #expect(hinted.map(\.bitPattern) == got.map(\.bitPattern), "\(dtype.name) \(path) n \(n) rows \(rows)")
      }
    }
  }

  @Test(arguments: types)
  func productIsCloseToTheDequantizedF32Product(_ dtype: DType) {
    // What activation quantization costs: int8 per block of 32 against f32.
    let n = 2, rows = 8, cols = 576
    let blocks = QuantizedReference.blocks(dtype, Self.values(rows * cols, seed: 3), rows: rows, cols: cols)
    let x = Self.values(n * cols, seed: 4)
    var w = [Float](repeating: 0, count: rows * cols)
    blocks.withUnsafeBytes { b in
      w.withUnsafeMutableBufferPointer { decodeToFloat(dtype, src: b.baseAddress!, count: rows * cols, dst: $0.baseAddress!) }
    }
    let got = QuantizedReference.product(dtype, blocks: blocks, rows: rows, cols: cols, x: x, n: n,
                                         kernels: Kernels.quantKernels())
    for i in 0..<n {
      for j in 0..<rows {
        var exact = 0.0, magnitude = 0.0
        for h in 0..<cols {
          exact += Double(x[i * cols + h]) * Double(w[j * cols + h])
          magnitude += abs(Double(x[i * cols + h]) * Double(w[j * cols + h]))
        }
        // Each activation moves by at most half a step (max|x| / 254 of its block).
        #expect(abs(Double(got[i * rows + j]) - exact) <= magnitude / 100, "\(dtype.name) (\(i), \(j))")
      }
    }
  }

  @Test func manyTokensDequantizeExactly() {
    // Above the decode limit, rows are dequantized and the f32 kernels run:
    // the result is that of the f32 weights.
    let dtype = DType.q4_1, n = smallGEMMTokenLimit + 5, rows = 40, cols = 128
    let blocks = QuantizedReference.blocks(dtype, Self.values(rows * cols, seed: 11), rows: rows, cols: cols)
    let x = Self.values(n * cols, seed: 12)
    let got = QuantizedReference.product(dtype, blocks: blocks, rows: rows, cols: cols, x: x, n: n,
                                         kernels: Kernels.quantKernels())
    var w = [Float](repeating: 0, count: rows * cols)
    blocks.withUnsafeBytes { b in
      w.withUnsafeMutableBufferPointer { decodeToFloat(dtype, src: b.baseAddress!, count: rows * cols, dst: $0.baseAddress!) }
    }
    let f32 = w.withUnsafeBytes { wp in
      GEMM.productForTesting(n: n, rows: rows, k: cols, x: x, w: WeightMatrix(base: wp.baseAddress!, dtype: .f32, ld: cols))
    }
    #expect(got.map(\.bitPattern) == f32.map(\.bitPattern))
  }

  @Test(arguments: types)
  func nonFiniteActivationsGiveNaN(_ dtype: DType) {
    let rows = 4, cols = 64
    let blocks = QuantizedReference.blocks(dtype, Self.values(rows * cols, seed: 5), rows: rows, cols: cols)
    for bad in [Float.nan, .infinity] {
      var x = Self.values(cols, seed: 6)
      x[40] = bad
      for path in QuantKernels.allCases.filter(\.runsHere) {
        let got = QuantizedReference.product(dtype, blocks: blocks, rows: rows, cols: cols, x: x, n: 1, kernels: path)
        #expect(got.allSatisfy { $0.isNaN }, "\(dtype.name) \(path) \(bad)")
      }
    }
  }

  @Test func kernelChoiceFollowsThePath() {
    #expect(Kernels.quantKernels(path: .portable) == .portable)
    if QuantKernels.avx2.runsHere { #expect(Kernels.quantKernels(path: .avx2) == .avx2) }
    let wide = Kernels.quantKernels(path: .avx512)
    #expect(wide == (QuantKernels.avx512vnni.runsHere ? .avx512vnni : (QuantKernels.avx2.runsHere ? .avx2 : .portable)))
    #expect(!Kernels.quantReason().isEmpty)
  }
}
