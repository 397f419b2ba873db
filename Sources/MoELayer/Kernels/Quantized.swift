// Products with quantized weights (GGML's Q8_0, Q4_0, Q4_1 kept quantized in
// memory, repacked per row by quant.c). Few tokens (decode): the activations
// are quantized to int8 per block of 32 and each weight row is read once as
// integer dot products (AVX512-VNNI, AVX2, or plain C); more tokens (prefill):
// blocks of weight rows are dequantized to f32 and go through the packed
// kernels of the active path.

import CMoECPU
import MoEKernelCode
import MoESupport
import MoERuntime

extension DType {
  /// quant.c's kind for GGML's quantized types; nil for the others.
  var quantKind: Int32? {
    switch self {
    case .q8_0: return Int32(MOE_Q8_0)
    case .q4_0: return Int32(MOE_Q4_0)
    case .q4_1: return Int32(MOE_Q4_1)
    case .f32, .f16, .bf16: return nil
    }
  }

  /// Bytes of one stored row of `cols` elements: packed blocks for the quantized types.
  package func rowBytes(cols: Int) -> Int {
    if let kind = quantKind { return moe_q_row_bytes(kind, cols) }
    return cols * elementBytes
  }
}

/// Rows of f32 values (`ld` apart) rounded to GGML's `dtype` blocks and packed
/// in quant.c's row layout at `dst` (rows dtype.rowBytes(cols:) apart);
/// cols a multiple of 32.
package func packQuantizedRows(_ dtype: DType, values: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int,
                               into dst: UnsafeMutableRawPointer) {
  guard let kind = dtype.quantKind else { return }
  var blocks = [UInt8](repeating: 0, count: cols / 32 * dtype.blockBytes)
  let rowBytes = dtype.rowBytes(cols: cols)
  blocks.withUnsafeMutableBytes { b in
    for r in 0..<rows {
      encodeFromFloat(dtype, src: values + r * ld, count: cols, dst: b.baseAddress!)
      moe_q_pack_row(kind, b.baseAddress!, cols, dst + r * rowBytes)
    }
  }
}

/// GGML blocks of `dtype` kept bit for bit: row r's cols / 32 blocks start at
/// blocks + r * blockStride; packed as packQuantizedRows(values:) packs.
package func packQuantizedRows(_ dtype: DType, blocks: UnsafeRawPointer, rows: Int, cols: Int, blockStride: Int,
                               into dst: UnsafeMutableRawPointer) {
  guard let kind = dtype.quantKind else { return }
  let rowBytes = dtype.rowBytes(cols: cols)
  for r in 0..<rows { moe_q_pack_row(kind, blocks + r * blockStride, cols, dst + r * rowBytes) }
}

package enum QuantizedGEMM {
  /// Weight rows dequantized at a time for the packed kernels: up to 4 MiB of
  /// f32, so that a worker's share of most matrices is one block (the
  /// activations are packed once per block).
  static func chunkRows(rows: Int, k: Int) -> Int { max(16, min(rows, (1 << 20) / max(k, 1))) }

  /// c[n, rows] (ldc) = x[n, k] (ldx) * w^T, or += when accumulate, for a
  /// quantized w (rows of k elements, k a multiple of 32). `callTokens`: the
  /// tokens of the whole call these n rows belong to (default n), which
  /// decides the path, so that every row of a call is computed alike.
  package static func xWt(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int, w: WeightMatrix,
                          c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, compute: ComputePrecision,
                          callTokens: Int? = nil, kernels: QuantKernels = Kernels.quantized,
                          walk: RowStreaming = Kernels.rowStreaming) {
    guard n > 0, rows > 0, let kind = w.dtype.quantKind else { return }
    let rowBytes = w.dtype.rowBytes(cols: k)
    if (callTokens ?? n) <= smallGEMMTokenLimit {
      let actBytes = moe_q_act_bytes(kind, k)
      if let buffer = moe_thread_buffer(3, (n * actBytes + 3) / 4) {
        let act = UnsafeMutableRawPointer(buffer)
        for i in 0..<n { moe_q_quantize_act(kind, x + i * ldx, k, act + i * actBytes) }
        moe_q_gemm(kernels.isa, kind, walk == .hinted ? 1 : 0, n, rows, k, w.base, rowBytes, act, actBytes, c, ldc, accumulate ? 1 : 0)
        return
      }
    }
    let chunk = chunkRows(rows: rows, k: k)
    guard let buffer = moe_thread_buffer(2, chunk * k) else {
      // No memory for a block of rows: one row at a time.
      var row = [Float](repeating: 0, count: k)
      row.withUnsafeMutableBufferPointer { r in
        for j in 0..<rows {
          moe_q_unpack_row(kind, w.base + j * rowBytes, k, r.baseAddress!)
          for i in 0..<n { SmallGEMM.store(dot(x + i * ldx, r.baseAddress!, k), c + i * ldc + j, accumulate) }
        }
      }
      return
    }
    var j0 = 0
    while j0 < rows {
      let count = min(chunk, rows - j0)
      for j in 0..<count { moe_q_unpack_row(kind, w.base + (j0 + j) * rowBytes, k, buffer + j * k) }
      Kernels.gemm(GEMMProblem(m: n, n: count, k: k, a: MatrixOperand(base: x, ld: ldx),
                               b: MatrixOperand(base: buffer, ld: k, transposed: true),
                               c: c + j0, ldc: ldc, accumulate: accumulate, compute: compute))
      j0 += count
    }
  }

  /// Row j of a quantized w (its `cols` elements) as f32 into out.
  package static func row(_ w: WeightMatrix, _ j: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
    guard let kind = w.dtype.quantKind else { return }
    moe_q_unpack_row(kind, w.base + j * w.dtype.rowBytes(cols: cols), cols, out)
  }
}

/// Plain references for the tests.
public enum QuantizedReference {
  /// GGML blocks (as GGUF stores them) of f32 values [rows, cols], cols a multiple of 32.
  public static func blocks(_ dtype: DType, _ values: [Float], rows: Int, cols: Int) -> [UInt8] {
    let perRow = cols / 32 * dtype.blockBytes
    var out = [UInt8](repeating: 0, count: rows * perRow)
    values.withUnsafeBufferPointer { v in
      out.withUnsafeMutableBytes { o in
        for r in 0..<rows {
          encodeFromFloat(dtype, src: v.baseAddress! + r * cols, count: cols, dst: o.baseAddress! + r * perRow)
        }
      }
    }
    return out
  }

  /// c[n, rows] = x[n, cols] w^T from GGML blocks of w on `kernels`, through
  /// the packed row layout (what a loaded model runs).
  public static func product(_ dtype: DType, blocks: [UInt8], rows: Int, cols: Int, x: [Float], n: Int,
                             kernels: QuantKernels, walk: RowStreaming = Kernels.rowStreaming) -> [Float] {
    let packed = pack(dtype, blocks: blocks, rows: rows, cols: cols)
    var c = [Float](repeating: 0, count: n * rows)
    packed.withUnsafeBytes { p in
      x.withUnsafeBufferPointer { xp in
        c.withUnsafeMutableBufferPointer { cp in
          QuantizedGEMM.xWt(n: n, rows: rows, k: cols, x: xp.baseAddress!, ldx: cols,
                            w: WeightMatrix(base: p.baseAddress!, dtype: dtype, ld: cols),
                            c: cp.baseAddress!, ldc: rows, accumulate: false, compute: .f32, kernels: kernels,
                            walk: walk)
        }
      }
    }
    return c
  }

  /// The packed rows of GGML blocks.
  public static func pack(_ dtype: DType, blocks: [UInt8], rows: Int, cols: Int) -> [UInt8] {
    var packed = [UInt8](repeating: 0, count: rows * dtype.rowBytes(cols: cols))
    blocks.withUnsafeBytes { b in
      packed.withUnsafeMutableBytes { p in
        packQuantizedRows(dtype, blocks: b.baseAddress!, rows: rows, cols: cols, blockStride: cols / 32 * dtype.blockBytes,
                          into: p.baseAddress!)
      }
    }
    return packed
  }

  /// Packed rows back to f32 [rows, cols].
  public static func unpack(_ dtype: DType, packed: [UInt8], rows: Int, cols: Int) -> [Float] {
    var out = [Float](repeating: 0, count: rows * cols)
    guard let kind = dtype.quantKind else { return out }
    let rowBytes = dtype.rowBytes(cols: cols)
    packed.withUnsafeBytes { p in
      out.withUnsafeMutableBufferPointer { o in
        for r in 0..<rows { moe_q_unpack_row(kind, p.baseAddress! + r * rowBytes, cols, o.baseAddress! + r * cols) }
      }
    }
    return out
  }

  /// What every quantized kernel computes, in Double: activations quantized
  /// per block of 32 (scale max|x| / 127, rounded to nearest even), then
  /// sum_b d_b dx_b sum_e q_e xq_e (+ m_b dx_b sum_e xq_e for Q4_1).
  public static func expected(_ dtype: DType, blocks: [UInt8], rows: Int, cols: Int, x: [Float], n: Int) -> [Double] {
    let perRow = cols / 32 * dtype.blockBytes
    var c = [Double](repeating: 0, count: n * rows)
    for i in 0..<n {
      for j in 0..<rows {
        var s = 0.0
        for b in 0..<(cols / 32) {
          let xb = Array(x[(i * cols + b * 32)..<(i * cols + b * 32 + 32)])
          let amax = xb.map { abs($0) }.max() ?? 0
          let d = amax / 127, id: Float = d > 0 ? 127 / amax : 0
          let xq = xb.map { max(-127, min(127, ($0 * id).rounded(.toNearestOrEven))) }
          let blk = Array(blocks[(j * perRow + b * dtype.blockBytes)..<(j * perRow + (b + 1) * dtype.blockBytes)])
          let dw = Double(f16ToFloat(UInt16(blk[0]) | UInt16(blk[1]) << 8))
          var isum = 0.0, xsum = 0.0
          for e in 0..<32 {
            let q: Int
            switch dtype {
            case .q8_0: q = Int(Int8(bitPattern: blk[2 + e]))
            case .q4_0: q = Int(e < 16 ? blk[2 + e] & 0x0F : blk[2 + e - 16] >> 4) - 8
            default: q = Int(e < 16 ? blk[4 + e] & 0x0F : blk[4 + e - 16] >> 4)
            }
            isum += Double(q) * Double(xq[e])
            xsum += Double(xq[e])
          }
          s += dw * Double(d) * isum
          if dtype == .q4_1 { s += Double(f16ToFloat(UInt16(blk[2]) | UInt16(blk[3]) << 8)) * Double(d) * xsum }
        }
        c[i * rows + j] = s
      }
    }
    return c
  }
}
