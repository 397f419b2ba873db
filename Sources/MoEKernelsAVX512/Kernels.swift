// AVX-512 (F): 16-float zmm vectors, FMA. The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import MoEKernelCode

public enum AVX512Kernels: KernelISA {
  public typealias V = SIMD16<Float>
  @inline(__always) public static func load(_ p: UnsafePointer<Float>) -> V {
    UnsafeRawPointer(p).loadUnaligned(as: V.self)
  }
  @inline(__always) public static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
  }
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc.addingProduct(a, b)
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 144 }

  public static let table = KernelTable(
    name: "avx512", width: 16, fused: true,
    gemm: { PackedGEMM.run(AVX512Kernels.self, $0) },
    fmaLoop: { FMALoop.run(AVX512Kernels.self, iterations: $0) })
}
