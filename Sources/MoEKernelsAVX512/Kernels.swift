// AVX-512 (F): 16-float zmm vectors, FMA. The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import CMoECPU
import MoEKernelCode

public enum AVX512Kernels: KernelISA {
  public typealias V = SIMD16<Float>
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc.addingProduct(a, b)
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 144 }
  /// 24 accumulators of the 32 zmm registers: 7 loads per 12 multiply-adds
  /// where the 6-row tile issues 8 (4-5% more per thread in the median on
  /// Emerald Rapids, the two loops timed alternately).
  public static var tileRows: Int { 12 }
  @inline(__always)
  public static func packTransposed(_ src: UnsafePointer<Float>, ld: Int, kc: Int, nr: Int,
                                    into dst: UnsafeMutablePointer<Float>) -> Bool {
    moe_pack_bt_f32_avx512(src, ld, kc, nr, dst)
    return true
  }
  @inline(__always)
  public static func packRows(_ src: UnsafePointer<Float>, ld: Int, kc: Int, mr: Int,
                              into dst: UnsafeMutablePointer<Float>) -> Bool {
    moe_pack_a_f32_avx512(src, ld, kc, mr, dst)
    return true
  }

  /// bf16 compute on the fallback.
  public static let table = makeTable(name: "avx512", fused: true)
  /// The same kernels with bf16 compute on AVX512-BF16 and on AMX tiles
  /// (each on the fallback where the CPU does not run it).
  public static let avx512bf16Table = makeTable(name: "avx512", fused: true, bf16: .avx512bf16)
  public static let amxTable = makeTable(name: "avx512", fused: true, bf16: .amx)

  /// The table whose bf16 compute runs on `bf16` (where it runs here).
  public static func table(bf16: BF16Kernels) -> KernelTable {
    switch bf16 {
    case .amx: return amxTable
    case .avx512bf16: return avx512bf16Table
    case .fallback: return table
    }
  }
}
