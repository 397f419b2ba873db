// AVX2 + FMA: 8-float ymm vectors. The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import CMoECPU
import MoEKernelCode

public enum AVX2Kernels: KernelISA {
  public typealias V = SIMD8<Float>
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc.addingProduct(a, b)
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 144 }
  @inline(__always)
  public static func packTransposed(_ src: UnsafePointer<Float>, ld: Int, kc: Int, nr: Int,
                                    into dst: UnsafeMutablePointer<Float>) -> Bool {
    moe_pack_bt_f32_avx2(src, ld, kc, nr, dst)
    return true
  }
  @inline(__always)
  public static func packRows(_ src: UnsafePointer<Float>, ld: Int, kc: Int, mr: Int,
                              into dst: UnsafeMutablePointer<Float>) -> Bool {
    moe_pack_a_f32_avx2(src, ld, kc, mr, dst)
    return true
  }

  public static let table = makeTable(name: "avx2", fused: true)
}
