// AVX2 + FMA: 8-float ymm vectors. The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import MoEKernelCode

public enum AVX2Kernels: KernelISA {
  public typealias V = SIMD8<Float>
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc.addingProduct(a, b)
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 144 }

  public static let table = makeTable(name: "avx2", fused: true)
}
