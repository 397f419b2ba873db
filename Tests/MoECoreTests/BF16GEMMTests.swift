import Testing
@testable import MoEKernelCode
import MoEKernelsAVX2
import MoEKernelsAVX512
import MoEKernelsPortable
@testable import MoESupport
@testable import MoERuntime

/// bf16 compute of the packed GEMM (PackedGEMM.swift): on AMX tiles and on
/// AVX512-BF16 where the CPU runs them and on the fallback of every path, against
///  - an exact emulation of each kernel's sum order (bit for bit; AMX has none, see Order),
///  - the exact product of the bf16-rounded operands (within f32 accumulation:
///    (k + 2) * 2^-23 * sum |a_t b_t|),
///  - the f32 product of the unrounded operands (within 2^-7 * sum |a_t| |b_t|
///    more: each operand rounds by at most 2^-8 of itself), from which it
///    must differ,
/// over sizes 0, 1, odd, edge tiles, several k blocks, transposed and
/// bf16-stored operands, accumulation on and off.
@Suite struct BF16GEMMTests {
  /// One way a bf16 product can run here.
  struct Variant: Sendable, CustomStringConvertible {
    var path: KernelPath
    /// Where bf16 compute is forced to run (nil: the automatic choice).
    var forced: BF16Kernels?
    /// Where it runs.
    var kernels: BF16Kernels
    var description: String { "\(path.rawValue)-\(forced?.rawValue ?? "auto")-\(kernels.rawValue)" }
  }

  /// Every path automatically, and where the CPU runs AVX512-BF16 (and AMX)
  /// the paths that use the AVX-512 kernels with each of the bf16 kernels
  /// forced (the automatic choice takes one of them).
  static let variants: [Variant] = Kernels.availablePaths().flatMap { path -> [Variant] in
    var out = [Variant(path: path, forced: nil, kernels: path.table(for: .bf16)?.bf16 ?? .fallback)]
    if Kernels.cpuRunsBF16 && (path == .avx512 || path == .openblas) {
      for kernels in BF16Kernels.allCases where kernels.runsHere {
        out.append(Variant(path: path, forced: kernels, kernels: kernels))
      }
    }
    return out
  }

  enum Layout: CaseIterable { case xWt, aW, atB }

  /// How a kernel sums one k block's products.
  enum Order {
    /// In index order (the f32 microkernels).
    case indexOrder
    /// Per pair, the odd product, then the even one (vdpbf16ps).
    case oddFirst
    /// The order of `kernels`; nil for AMX, whose tdpbf16ps sums a tile's
    /// products its own way (on Emerald Rapids not even the correctly
    /// rounded sum of 9 products: no order of f32 additions reproduces it),
    /// so only the bounds hold there.
    init?(_ kernels: BF16Kernels) {
      switch kernels {
      case .fallback: self = .indexOrder
      case .avx512bf16: self = .oddFirst
      case .amx: return nil
      }
    }
  }

  static let shapes: [(m: Int, n: Int, k: Int)] = [
    (0, 5, 3), (4, 0, 3), (3, 5, 0), (1, 1, 1), (1, 1, 2), (2, 3, 5), (6, 32, 8), (7, 33, 9), (5, 31, 31),
    (13, 33, 257), (150, 40, 300), (5, 70, 600), (64, 8, 576), (2, 2100, 3),
  ]

  /// Two stored operands and C for one problem.
  struct Operands {
    var m: Int, n: Int, k: Int, layout: Layout, aBF16: Bool, bBF16: Bool
    var lda: Int, ldb: Int, ldc: Int
    var aFloat: [Float], bFloat: [Float], aHalf: [UInt16], bHalf: [UInt16]
    var c0: [Float]

    init(m: Int, n: Int, k: Int, layout: Layout, aBF16: Bool, bBF16: Bool, seed: UInt64) {
      self.m = m; self.n = n; self.k = k; self.layout = layout; self.aBF16 = aBF16; self.bBF16 = bBF16
      var rng = Rng(seed: seed)
      let aRows = layout == .atB ? k : m, aCols = layout == .atB ? m : k
      let bRows = layout == .xWt ? n : k, bCols = layout == .xWt ? k : n
      lda = aCols + 3; ldb = bCols + 5; ldc = n + 2
      aFloat = (0..<(aRows * lda)).map { _ in Float(rng.normal()) }
      bFloat = (0..<(bRows * ldb)).map { _ in Float(rng.normal()) * 0.5 }
      aHalf = aFloat.map(floatToBF16)
      bHalf = bFloat.map(floatToBF16)
      c0 = (0..<(m * ldc)).map { _ in Float(rng.normal()) }
    }

    /// Element (i, t) of A and (t, j) of B as stored (bf16 widened).
    func a(_ i: Int, _ t: Int) -> Float {
      let index = layout == .atB ? t * lda + i : i * lda + t
      return aBF16 ? bf16ToFloat(aHalf[index]) : aFloat[index]
    }
    func b(_ t: Int, _ j: Int) -> Float {
      let index = layout == .xWt ? j * ldb + t : t * ldb + j
      return bBF16 ? bf16ToFloat(bHalf[index]) : bFloat[index]
    }

    /// C (m x ldc, starting from c0) after the product on `variant`.
    func run(_ variant: Variant, compute: ComputePrecision, accumulate: Bool) -> [Float] {
      var c = c0
      let aBytes = aBF16 ? aHalf.withUnsafeBytes { Array($0) } : aFloat.withUnsafeBytes { Array($0) }
      let bBytes = bBF16 ? bHalf.withUnsafeBytes { Array($0) } : bFloat.withUnsafeBytes { Array($0) }
      aBytes.withUnsafeBytes { ap in bBytes.withUnsafeBytes { bp in c.withUnsafeMutableBufferPointer { cp in
        let p = GEMMProblem(m: m, n: n, k: k,
                            a: MatrixOperand(base: ap.baseAddress!, ld: lda, transposed: layout == .atB, bf16: aBF16),
                            b: MatrixOperand(base: bp.baseAddress!, ld: ldb, transposed: layout == .xWt, bf16: bBF16),
                            c: cp.baseAddress!, ldc: ldc, accumulate: accumulate, compute: compute)
        Kernels.gemm(p, path: variant.path, bf16: variant.forced)
      } } }
      return c
    }
  }

  /// The kernels' sum, emulated: k in blocks of kc (as PackedGEMM.blocked
  /// splits it, K.kc = 256 on every path), each block summed in f32 from zero
  /// over the rounded operands' products (exact in f32) and then added to C;
  /// vdpbf16ps adds each pair's odd product before its even one.
  static func emulate(_ o: Operands, accumulate: Bool, order: Order) -> [Float] {
    let k = o.k
    var out = o.c0
    guard o.m > 0, o.n > 0 else { return out }
    let kBlocks = max(1, (k + 255) / 256)
    let kcMax = min(256, ((k + kBlocks - 1) / kBlocks + 7) / 8 * 8)
    for i in 0..<o.m {
      for j in 0..<o.n {
        var c: Float = accumulate ? o.c0[i * o.ldc + j] : 0
        func product(_ t: Int) -> Float { bf16ComputeOperand(o.a(i, t)) * bf16ComputeOperand(o.b(t, j)) }
        var pc = 0
        while pc < k {
          let kc = min(kcMax, k - pc)
          var tile: Float = 0
          var t = 0
          while t < kc {
            if order == .oddFirst {
              if t + 1 < kc { tile += product(pc + t + 1) }
              tile += product(pc + t)
              t += 2
            } else {
              tile += product(pc + t)
              t += 1
            }
          }
          c = accumulate || pc > 0 ? c + tile : tile
          pc += kc
        }
        out[i * o.ldc + j] = c
      }
    }
    return out
  }

  @Test func tilingIsTheOneEmulated() {
    #expect(AVX512Kernels.kc == 256 && AVX2Kernels.kc == 256 && PortableKernels.kc == 256)
  }

  @Test(arguments: variants, Layout.allCases)
  func matchesExactEmulationAndReference(variant: Variant, layout: Layout) {
    for (s, (m, n, k)) in Self.shapes.enumerated() {
      for (aBF16, bBF16) in [(false, false), (false, true), (true, false)] {
        let o = Operands(m: m, n: n, k: k, layout: layout, aBF16: aBF16, bBF16: bBF16, seed: UInt64(s * 4 + 1))
        for accumulate in [false, true] {
          let what = "\(variant) \(layout) m=\(m) n=\(n) k=\(k) aBF16=\(aBF16) bBF16=\(bBF16) accumulate=\(accumulate)"
          let c = o.run(variant, compute: .bf16, accumulate: accumulate)
          let order = Order(variant.kernels)
          let exact = order.map { Self.emulate(o, accumulate: accumulate, order: $0) }
          var mismatches = 0, worst = 0.0, worstF32 = 0.0
          for i in 0..<m {
            for j in 0..<o.ldc {
              let x = c[i * o.ldc + j]
              guard j < n else {
                #expect(x.bitPattern == o.c0[i * o.ldc + j].bitPattern, "\(what): wrote column \(j)")
                continue
              }
              if let exact, x != exact[i * o.ldc + j] { mismatches += 1 }
              // The exact product of the rounded operands, and of the unrounded ones.
              var ref = accumulate ? Double(o.c0[i * o.ldc + j]) : 0, scale = abs(ref)
              var f32 = ref, f32Scale = abs(ref)
              for t in 0..<k {
                let pa = Double(bf16ComputeOperand(o.a(i, t))), pb = Double(bf16ComputeOperand(o.b(t, j)))
                ref += pa * pb
                scale += abs(pa * pb)
                f32 += Double(o.a(i, t)) * Double(o.b(t, j))
                f32Scale += abs(Double(o.a(i, t)) * Double(o.b(t, j)))
              }
              let tolerance = Double(k + 2) * 0x1p-23 * scale
              worst = max(worst, abs(Double(x) - ref) - tolerance)
              worstF32 = max(worstF32, abs(Double(x) - f32) - (1.01 * 0x1p-7 * f32Scale + tolerance))
            }
          }
          #expect(mismatches == 0, "\(what): \(mismatches) elements differ from the exact emulation")
          #expect(worst <= 0, "\(what): over the accumulation bound by \(worst)")
          #expect(worstF32 <= 0, "\(what): over the bf16-vs-f32 bound by \(worstF32)")
        }
      }
    }
  }

  /// bf16 compute really rounds: it differs from f32 compute of f32 operands,
  /// and only by about the bf16 rounding.
  @Test(arguments: variants)
  func differsFromF32Compute(variant: Variant) {
    let o = Operands(m: 40, n: 50, k: 300, layout: .xWt, aBF16: false, bBF16: false, seed: 9)
    let bf16 = o.run(variant, compute: .bf16, accumulate: false)
    let f32 = o.run(variant, compute: .f32, accumulate: false)
    var differing = 0, worstRelative = 0.0
    for i in 0..<o.m {
      for j in 0..<o.n where bf16[i * o.ldc + j] != f32[i * o.ldc + j] {
        differing += 1
        var scale = 0.0
        for t in 0..<o.k { scale += abs(Double(o.a(i, t)) * Double(o.b(t, j))) }
        worstRelative = max(worstRelative, abs(Double(bf16[i * o.ldc + j] - f32[i * o.ldc + j])) / scale)
      }
    }
    #expect(differing > o.m * o.n / 2, "\(variant): only \(differing) of \(o.m * o.n) elements differ")
    let bound = 1.01 * 0x1p-7 + Double(o.k + 2) * 0x1p-23
    #expect(worstRelative > 0 && worstRelative <= bound, "\(variant): worst error \(worstRelative) of sum |a||b|")
  }

  /// The same product twice gives the same bits, and one fused pair equals
  /// the two products run alone.
  @Test(arguments: variants)
  func repeatableAndFusedPairsMatch(variant: Variant) {
    let o = Operands(m: 37, n: 45, k: 333, layout: .xWt, aBF16: false, bBF16: true, seed: 5)
    let first = o.run(variant, compute: .bf16, accumulate: true)
    let second = o.run(variant, compute: .bf16, accumulate: true)
    #expect(first.map(\.bitPattern) == second.map(\.bitPattern))
    // A shared, and two products fused: c1 = a b1, c2 = a b2 (b2 = the same B, other memory).
    let other = Operands(m: 37, n: 45, k: 333, layout: .xWt, aBF16: false, bBF16: true, seed: 6)
    var c1 = o.c0, c2 = o.c0
    o.aFloat.withUnsafeBytes { ap in o.bHalf.withUnsafeBytes { b1 in other.bHalf.withUnsafeBytes { b2 in
      c1.withUnsafeMutableBufferPointer { p1 in c2.withUnsafeMutableBufferPointer { p2 in
        let a = MatrixOperand(base: ap.baseAddress!, ld: o.lda)
        func problem(_ b: UnsafeRawBufferPointer, _ c: UnsafeMutableBufferPointer<Float>) -> GEMMProblem {
          GEMMProblem(m: o.m, n: o.n, k: o.k, a: a, b: MatrixOperand(base: b.baseAddress!, ld: o.ldb, transposed: true, bf16: true),
                      c: c.baseAddress!, ldc: o.ldc, accumulate: false, compute: .bf16)
        }
        Kernels.gemmFused(problem(b1, p1), problem(b2, p2), path: variant.path, bf16: variant.forced) { _, _, _, _ in }
      } }
    } } }
    var alone = other
    alone.aFloat = o.aFloat
    alone.c0 = o.c0
    let single1 = o.run(variant, compute: .bf16, accumulate: false)
    let single2 = alone.run(variant, compute: .bf16, accumulate: false)
    #expect(c1.map(\.bitPattern) == single1.map(\.bitPattern))
    #expect(c2.map(\.bitPattern) == single2.map(\.bitPattern))
  }

  /// NaN and infinity in an operand reach exactly the outputs that use them.
  @Test(arguments: variants)
  func nonFiniteOperandsPropagate(variant: Variant) {
    var o = Operands(m: 9, n: 40, k: 21, layout: .aW, aBF16: false, bBF16: false, seed: 3)
    o.aFloat[2 * o.lda + 5] = .nan
    o.bFloat[7 * o.ldb + 33] = .infinity
    let c = o.run(variant, compute: .bf16, accumulate: false)
    for i in 0..<o.m {
      for j in 0..<o.n {
        let x = c[i * o.ldc + j]
        if i == 2 { #expect(x.isNaN, "\(variant) [\(i), \(j)]") } else if j == 33 {
          #expect(x.isInfinite || x.isNaN, "\(variant) [\(i), \(j)]: \(x)")
        } else { #expect(x.isFinite, "\(variant) [\(i), \(j)]: \(x)") }
      }
    }
  }

  /// Rounding to a bf16 operand: nearest even, NaN kept (quieted), subnormals
  /// to signed zero, overflow to infinity; the packed (vector) rounding agrees
  /// with the scalar one on every kind of bit pattern.
  @Test func roundingMatchesTheInstruction() {
    #expect(bf16ComputeOperand(1 + 0x1p-8) == 1)                  // tie, even below
    #expect(bf16ComputeOperand(1 + 3 * 0x1p-8) == 1 + 0x1p-6)     // tie, even above
    #expect(bf16ComputeOperand(1 + 0x1p-8 + 0x1p-20) == 1 + 0x1p-7)
    #expect(bf16ComputeOperand(-1.5) == -1.5)
    #expect(bf16ComputeOperand(.nan).isNaN)
    #expect(bf16ComputeOperand(Float(bitPattern: 0x7F80_0001)).isNaN)  // signaling NaN, low bits only
    #expect(bf16ComputeOperand(.infinity) == .infinity)
    #expect(bf16ComputeOperand(.greatestFiniteMagnitude) == .infinity)
    #expect(bf16ComputeOperand(1e-39).bitPattern == 0)
    #expect(bf16ComputeOperand(-1e-39).bitPattern == 0x8000_0000)
    #expect(bf16ComputeOperand(-0.0).bitPattern == 0x8000_0000)
    var rng = Rng(seed: 11)
    var values = (0..<4099).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
    values += [.nan, -.nan, .infinity, -.infinity, 0, -0.0, 1e-39, -1e-39, .leastNormalMagnitude, 1 + 0x1p-8]
    var packed = values
    packed.withUnsafeMutableBufferPointer { PackedGEMM.roundToBF16(AVX2Kernels.self, $0.baseAddress!, count: $0.count) }
    for (v, r) in zip(values, packed) {
      let s = bf16ComputeOperand(v)
      #expect(s.bitPattern == r.bitPattern || (s.isNaN && r.isNaN), "\(v.bitPattern): \(r.bitPattern) vs \(s.bitPattern)")
      #expect(r.bitPattern & 0xFFFF == 0)
    }
  }

  @Test func bf16PathIsReported() {
    // Automatic: AMX tiles where the process runs them, else vdpbf16ps where
    // the CPU runs it, except on Intel cores (half their f32 rate there).
    let avx512 = Kernels.active.path == .avx512 || Kernels.active.path == .openblas
    let expected: BF16Kernels = !avx512 ? .fallback : Kernels.cpuRunsAMX ? .amx
      : CPUInfo.current.features.contains("avx512_bf16") && !Kernels.bf16NativeIsSlower ? .avx512bf16 : .fallback
    #expect(Kernels.bf16Kernels() == expected)
    #expect(Kernels.bf16NativeIsSlower == CPUInfo.current.brand.contains("Intel"), "\(CPUInfo.current.brand)")
    #expect(Kernels.bf16Kernels(path: .portable) == .fallback && Kernels.bf16Kernels(path: .avx2) == .fallback)
    #expect(Kernels.summary.contains("bf16 compute \(Kernels.bf16Kernels().rawValue)"))
    let peak = Kernels.measureBF16Peak(seconds: 0.01)
    #expect((peak != nil) == CPUInfo.current.features.contains("avx512_bf16"))
    if let peak { #expect(peak.isFinite && peak > 0) }
    let amxPeak = Kernels.measureBF16Peak(seconds: 0.01, kernels: .amx)
    #expect((amxPeak != nil) == Kernels.cpuRunsAMX)
    if let amxPeak, let vdp = Kernels.measureBF16Peak(seconds: 0.01, kernels: .avx512bf16) {
      // A 16 x 16 x 32 tile product per instruction: several times vdpbf16ps's rate.
      #expect(amxPeak > 2 * vdp, "AMX \(amxPeak) GFLOP/s against vdpbf16ps \(vdp)")
    }
  }
}
