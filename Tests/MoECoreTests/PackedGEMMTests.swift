import Testing
import MoEKernelCode
import MoEKernelsAVX2
import MoEKernelsAVX512
@testable import MoESupport
@testable import MoERuntime
@testable import MoELayer
import CMoECPU
import Glibc

/// Every kernel path this CPU runs against the plain product, for the three
/// operand layouts the library uses (x W^T, A W, A^T B), f32 and bf16 weights,
/// edge tiles, several packed blocks along k and accumulation.
@Suite struct PackedGEMMTests {
  /// c = a * b in Double, from element accessors.
  static func reference(_ m: Int, _ n: Int, _ k: Int, a: (Int, Int) -> Float, b: (Int, Int) -> Float,
                        c0: [Float]?) -> [Double] {
    var out = [Double](repeating: 0, count: m * n)
    for i in 0..<m {
      for j in 0..<n {
        var s = c0.map { Double($0[i * n + j]) } ?? 0
        for t in 0..<k { s += Double(a(i, t)) * Double(b(t, j)) }
        out[i * n + j] = s
      }
    }
    return out
  }

  enum Layout: CaseIterable { case xWt, aW, atB }

  static let shapes: [(m: Int, n: Int, k: Int)] = [
    (1, 1, 1), (6, 16, 8), (7, 17, 9), (13, 33, 257), (150, 40, 300), (5, 70, 600), (64, 8, 576), (2, 2100, 3),
    // Several column and inner blocks at once, on every L2 size.
    (14, 2100, 300),
  ]

  @Test(arguments: Kernels.availablePaths(), Layout.allCases)
  func pathMatchesReference(path: KernelPath, layout: Layout) {
    for (m, n, k) in Self.shapes {
      for bf16 in [false, true] where !(bf16 && layout == .atB) {
        for accumulate in [false, true] {
          check(path: path, layout: layout, m: m, n: n, k: k, bf16: bf16, accumulate: accumulate)
        }
      }
    }
  }

  func check(path: KernelPath, layout: Layout, m: Int, n: Int, k: Int, bf16: Bool, accumulate: Bool) {
    var rng = Rng(seed: UInt64(m * 7919 + n * 31 + k))
    // Stored operands with leading dimensions wider than the product needs.
    let aRows = layout == .atB ? k : m, aCols = layout == .atB ? m : k, lda = aCols + 3
    let bRows = layout == .xWt ? n : k, bCols = layout == .xWt ? k : n, ldb = bCols + 5
    let ldc = n + 2
    let aStore = (0..<(aRows * lda)).map { _ in Float(rng.normal()) }
    let bFloat = (0..<(bRows * ldb)).map { _ in Float(rng.normal()) }
    let bHalf = bFloat.map(floatToBF16)
    let c0 = (0..<(m * ldc)).map { _ in Float(rng.normal()) }
    let aAt: (Int, Int) -> Float = { i, t in layout == .atB ? aStore[t * lda + i] : aStore[i * lda + t] }
    let bValue: (Int) -> Float = { bf16 ? bf16ToFloat(bHalf[$0]) : bFloat[$0] }
    let bAt: (Int, Int) -> Float = { t, j in layout == .xWt ? bValue(j * ldb + t) : bValue(t * ldb + j) }
    let start = accumulate ? (0..<(m * n)).map { c0[($0 / n) * ldc + $0 % n] } : nil
    let ref = Self.reference(m, n, k, a: aAt, b: bAt, c0: start)
    var c = c0
    aStore.withUnsafeBytes { ap in
      (bf16 ? bHalf.withUnsafeBytes { Array($0) } : bFloat.withUnsafeBytes { Array($0) }).withUnsafeBytes { bp in
        c.withUnsafeMutableBufferPointer { cp in
          let problem = GEMMProblem(
            m: m, n: n, k: k,
            a: MatrixOperand(base: ap.baseAddress!, ld: lda, transposed: layout == .atB),
            b: MatrixOperand(base: bp.baseAddress!, ld: ldb, transposed: layout == .xWt, bf16: bf16),
            c: cp.baseAddress!, ldc: ldc, accumulate: accumulate)
          Kernels.gemm(problem, path: path)
        }
      }
    }
    let what = "\(path.rawValue) \(layout) m=\(m) n=\(n) k=\(k) bf16=\(bf16) accumulate=\(accumulate)"
    var worst: Double = 0
    for i in 0..<m {
      for j in 0..<n {
        // f32 sums of k products: error grows like sqrt(k) ulps of the magnitudes.
        let tol = 2e-6 * Double(k).squareRoot() * max(1, Double(k).squareRoot()) + 1e-6
        worst = max(worst, abs(Double(c[i * ldc + j]) - ref[i * n + j]) - tol)
      }
      // Columns past n are the caller's and stay untouched.
      for j in n..<ldc { #expect(c[i * ldc + j] == c0[i * ldc + j], "\(what): wrote column \(j)") }
    }
    #expect(worst <= 0, "\(what): error over tolerance by \(worst)")
  }

  /// GEMM.aW as the layers call it: the streaming path for few tokens (<= 16) and
  /// the packed path beyond, f32 and bf16 weights, set and accumulate.
  @Test(arguments: [1, 3, 16, 17, 40], [DType.f32, .bf16])
  func aWMatchesReference(tokens n: Int, dtype: DType) {
    let k = 37, cols = 70, lda = k + 1, ldc = cols + 3, ldw = cols + 2
    var rng = Rng(seed: UInt64(n * 3 + (dtype == .bf16 ? 1 : 0)))
    let a = (0..<(n * lda)).map { _ in Float(rng.normal()) }
    let wf = (0..<(k * ldw)).map { _ in Float(rng.normal()) }
    let wb = wf.map(floatToBF16)
    let c0 = (0..<(n * ldc)).map { _ in Float(rng.normal()) }
    for accumulate in [false, true] {
      var c = c0
      let run: (UnsafeRawPointer) -> Void = { w in
        a.withUnsafeBufferPointer { ap in c.withUnsafeMutableBufferPointer { cp in
          GEMM.aW(n: n, cols: cols, k: k, a: ap.baseAddress!, lda: lda, w: WeightMatrix(base: w, dtype: dtype, ld: ldw),
                  c: cp.baseAddress!, ldc: ldc, accumulate: accumulate)
        } }
      }
      if dtype == .f32 { wf.withUnsafeBytes { run($0.baseAddress!) } } else { wb.withUnsafeBytes { run($0.baseAddress!) } }
      for i in 0..<n {
        for j in 0..<ldc {
          guard j < cols else {
            #expect(c[i * ldc + j] == c0[i * ldc + j], "n=\(n): wrote column \(j)")
            continue
          }
          var s: Double = accumulate ? Double(c0[i * ldc + j]) : 0
          for t in 0..<k {
            let wv = dtype == .bf16 ? bf16ToFloat(wb[t * ldw + j]) : wf[t * ldw + j]
            s += Double(a[i * lda + t]) * Double(wv)
          }
          #expect(abs(Double(c[i * ldc + j]) - s) <= 1e-4 * max(1, abs(s)),
                  "n=\(n) \(dtype.name) accumulate=\(accumulate) [\(i), \(j)]: \(c[i * ldc + j]) vs \(s)")
        }
      }
    }
  }

  /// The L2 size that sizes the f32 B blocks (from cpuid, through the C
  /// library) is, within a factor of 2, the one Linux reports for CPU 0 in
  /// sysfs (from cpuid or firmware tables), and the block is half of it.
  @Test func l2SizeMatchesTheKernelsReport() throws {
    let l2 = moe_cpu_l2_bytes()
    #expect(l2 >= 64 << 10 && l2 <= 1 << 30)
    #expect(gemmF32BlockBytes == l2 / 2)
    guard let f = fopen("/sys/devices/system/cpu/cpu0/cache/index2/size", "r") else { return }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 64)
    guard fgets(&line, 64, f) != nil else { return }
    let text = String(cString: line).filter { !$0.isWhitespace }
    let unit: Int = text.hasSuffix("K") ? 1 << 10 : text.hasSuffix("M") ? 1 << 20 : 1
    let reported = try #require(Int(text.filter(\.isNumber)))
    #expect(l2 * 2 >= reported * unit && l2 <= 2 * reported * unit)
  }

  /// The register-transposed packings of each instruction set the CPU runs
  /// give the plain loops' panels bit for bit: A panels of every row count an
  /// ISA takes and B panels of transposed operands, with inner lengths around
  /// the transposes' block sizes and strides wider than the rows.
  @Test func registerPackingMatchesPlainLoops() {
    var rng = Rng(seed: 23)
    let ld = 53
    let src = (0..<(16 * ld)).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
    func plainA(_ kc: Int, _ mr: Int) -> [UInt32] {
      (0..<(kc * mr)).map { src[($0 % mr) * ld + $0 / mr].bitPattern }
    }
    func plainB(_ kc: Int, _ nr: Int) -> [UInt32] {
      (0..<(kc * nr)).map { src[($0 % nr) * ld + $0 / nr].bitPattern }
    }
    func packed(_ count: Int, _ body: (UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Bool) -> [UInt32]? {
      var out = [Float](repeating: .nan, count: count + 16)
      let ok = src.withUnsafeBufferPointer { s in out.withUnsafeMutableBufferPointer { body(s.baseAddress!, $0.baseAddress!) } }
      let untouched = out[count...].allSatisfy { $0.isNaN }
      #expect(untouched, "wrote past the panel")
      return ok ? out[..<count].map(\.bitPattern) : nil
    }
    var ran = 0
    for path in Kernels.availablePaths() where path == .avx512 || path == .avx2 {
      let rowLimit = path == .avx512 ? 16 : 8, width = path == .avx512 ? 16 : 8
      for kc in [1, 7, 8, 15, 16, 17, 31, 32, 40, 48] {
        for mr in 1...rowLimit {
          let got = packed(kc * mr) { s, d in
            path == .avx512 ? AVX512Kernels.packRows(s, ld: ld, kc: kc, mr: mr, into: d)
              : AVX2Kernels.packRows(s, ld: ld, kc: kc, mr: mr, into: d)
          }
          #expect(got == plainA(kc, mr), "\(path.rawValue) A panel kc=\(kc) mr=\(mr)")
          ran += 1
        }
        let got = packed(kc * width) { s, d in
          path == .avx512 ? AVX512Kernels.packTransposed(s, ld: ld, kc: kc, nr: width, into: d)
            : AVX2Kernels.packTransposed(s, ld: ld, kc: kc, nr: width, into: d)
        }
        #expect(got == plainB(kc, width), "\(path.rawValue) B panel kc=\(kc)")
      }
    }
    // x86 CPUs without AVX2 run only the plain loops; every machine here has it.
    #expect(ran > 0 || !CPUInfo.current.supports(.avx2).ok)
  }

  /// The same problem twice gives the same bits (fixed accumulation order).
  @Test(arguments: Kernels.availablePaths())
  func resultsAreRepeatable(path: KernelPath) {
    let m = 37, n = 45, k = 700
    var rng = Rng(seed: 5)
    let a = (0..<(m * k)).map { _ in Float(rng.normal()) }
    let b = (0..<(k * n)).map { _ in Float(rng.normal()) }
    func run() -> [Float] {
      var c = [Float](repeating: 0, count: m * n)
      a.withUnsafeBytes { ap in b.withUnsafeBytes { bp in c.withUnsafeMutableBufferPointer { cp in
        Kernels.gemm(GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: ap.baseAddress!, ld: k),
                                 b: MatrixOperand(base: bp.baseAddress!, ld: n), c: cp.baseAddress!, ldc: n,
                                 accumulate: false), path: path)
      } } }
      return c
    }
    let first = run(), second = run()
    #expect(first.map(\.bitPattern) == second.map(\.bitPattern))
  }

  @Test func choiceFollowsTheSetting() throws {
    let auto = try Kernels.choose(nil)
    #expect(auto.path == Kernels.bestPath() && !auto.forced)
    #expect(try Kernels.choose("auto").path == auto.path)
    #expect(try Kernels.choose(" Portable ").path == .portable)
    #expect(try Kernels.choose("openblas").forced)
    #expect(throws: MoEError.self) { try Kernels.choose("sse9") }
    do {
      _ = try Kernels.choose("sse9")
    } catch let e as MoEError {
      #expect(e.message.contains("MOEUPCYCLE_KERNELS='sse9'") && e.message.contains("avx2"))
    }
    for path in KernelPath.allCases where !Kernels.availablePaths().contains(path) {
      do {
        _ = try Kernels.choose(path.rawValue)
        Issue.record("\(path) forced on a CPU without it")
      } catch let e as MoEError {
        #expect(e.kind == .unsupported && e.message.contains("does not support"))
      }
    }
    #expect(Kernels.availablePaths().contains(.portable) && Kernels.availablePaths().contains(.openblas))
  }

  @Test func fmaPeakIsMeasured() {
    for path in Kernels.availablePaths() {
      let g = Kernels.measureFMAPeak(path: path, seconds: 0.01)
      // Unoptimized test builds run it slowly: only a positive, finite rate is asserted.
      #expect(g.isFinite && g > 0, "\(path): \(g) GFLOP/s")
    }
  }
}
