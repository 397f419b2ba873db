import Testing
import MoEKernelCode
import MoEKernelsPortable
import MoEKernelsAVX2
import MoEKernelsAVX512
@testable import MoESupport
@testable import MoERuntime
@testable import MoELayer

/// The fused products the MoE layer runs (two products in one blocked loop, an
/// epilogue per finished strip of C) on every kernel path this CPU runs, against
/// plain Double products, and against the same products run one at a time.
@Suite struct FusedGEMMTests {
  /// A row-major matrix of random values with leading dimension `ld`.
  struct Matrix {
    var rows: Int, cols: Int, ld: Int
    var values: [Float]
    init(_ rows: Int, _ cols: Int, pad: Int, _ rng: inout Rng) {
      self.rows = rows
      self.cols = cols
      ld = cols + pad
      values = (0..<(rows * (cols + pad))).map { _ in Float(rng.normal()) }
    }
    subscript(i: Int, j: Int) -> Float { values[i * ld + j] }
  }

  /// sum_t a(i, t) b(t, j) in Double.
  static func product(_ m: Int, _ n: Int, _ k: Int, _ a: (Int, Int) -> Float, _ b: (Int, Int) -> Float) -> [Double] {
    var out = [Double](repeating: 0, count: m * n)
    for i in 0..<m {
      for j in 0..<n {
        var s: Double = 0
        for t in 0..<k { s += Double(a(i, t)) * Double(b(t, j)) }
        out[i * n + j] = s
      }
    }
    return out
  }

  static func tolerance(_ k: Int) -> Double { 4e-6 * Double(max(k, 1)) + 1e-6 }

  static let shapes: [(m: Int, n: Int, k: Int)] = [
    (1, 1, 1), (7, 17, 9), (13, 40, 300), (150, 35, 257), (20, 2100, 5), (64, 48, 576),
    // Several column and inner blocks: epilogue strips of every column block.
    (14, 2100, 300),
  ]

  enum Kind: CaseIterable { case sharedA, sharedB, sameC }

  /// Two products with one operand in common (or one target), and an epilogue
  /// that records c1 * c2 + 1 per element: every element is seen exactly once,
  /// after both products hold their final values there.
  @Test(arguments: Kernels.availablePaths(), Kind.allCases)
  func pairMatchesReference(path: KernelPath, kind: Kind) {
    for (m, n, k) in Self.shapes {
      var rng = Rng(seed: UInt64(m * 131 + n * 7 + k))
      // sharedA: x[m, k] W1^T, x W2^T (W stored [n, k]); sharedB: A1^T b, A2^T b (A stored [k, m]);
      // sameC: a1 w1 + a2 w2 into one C (w stored [k, n]).
      let a1 = kind == .sharedB ? Matrix(k, m, pad: 3, &rng) : Matrix(m, k, pad: 3, &rng)
      let a2 = kind == .sharedB ? Matrix(k, m, pad: 3, &rng) : Matrix(m, k, pad: 3, &rng)
      let b1 = kind == .sharedA ? Matrix(n, k, pad: 2, &rng) : Matrix(k, n, pad: 2, &rng)
      let b2 = kind == .sharedA ? Matrix(n, k, pad: 2, &rng) : Matrix(k, n, pad: 2, &rng)
      let ldc = n + 1
      let start = (0..<(m * ldc)).map { _ in Float(rng.normal()) }
      var c1 = start, c2 = start.map { $0 * 0.5 }
      var seen = [Float](repeating: 0, count: m * n), visits = [Int](repeating: 0, count: m * n)
      withOperands(a1, a2, b1, b2) { pa1, pa2, pb1, pb2 in
        c1.withUnsafeMutableBufferPointer { q1 in c2.withUnsafeMutableBufferPointer { q2 in
          let out1 = q1.baseAddress!, out2 = kind == .sameC ? out1 : q2.baseAddress!
          let p: GEMMProblem, q: GEMMProblem
          switch kind {
          case .sharedA:
            let x = MatrixOperand(base: pa1, ld: a1.ld)
            p = GEMMProblem(m: m, n: n, k: k, a: x, b: MatrixOperand(base: pb1, ld: b1.ld, transposed: true),
                            c: out1, ldc: ldc, accumulate: false)
            q = GEMMProblem(m: m, n: n, k: k, a: x, b: MatrixOperand(base: pb2, ld: b2.ld, transposed: true),
                            c: out2, ldc: ldc, accumulate: false)
          case .sharedB:
            let b = MatrixOperand(base: pb1, ld: b1.ld)
            p = GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: pa1, ld: a1.ld, transposed: true), b: b,
                            c: out1, ldc: ldc, accumulate: true)
            q = GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: pa2, ld: a2.ld, transposed: true), b: b,
                            c: out2, ldc: ldc, accumulate: true)
          case .sameC:
            p = GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: pa1, ld: a1.ld), b: MatrixOperand(base: pb1, ld: b1.ld),
                            c: out1, ldc: ldc, accumulate: false)
            q = GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: pa2, ld: a2.ld), b: MatrixOperand(base: pb2, ld: b2.ld),
                            c: out2, ldc: ldc, accumulate: true)
          }
          Kernels.gemmFused(p, q, path: path) { r0, rows, col0, cols in
            for i in r0..<(r0 + rows) {
              for j in col0..<(col0 + cols) {
                seen[i * n + j] = out1[i * ldc + j] * out2[i * ldc + j] + 1
                visits[i * n + j] += 1
              }
            }
          }
        } }
      }
      let what = "\(path.rawValue) \(kind) m=\(m) n=\(n) k=\(k)"
      let r1: [Double], r2: [Double]
      switch kind {
      case .sharedA:
        r1 = Self.product(m, n, k, { a1[$0, $1] }, { b1[$1, $0] })
        r2 = Self.product(m, n, k, { a1[$0, $1] }, { b2[$1, $0] })
      case .sharedB:
        r1 = Self.product(m, n, k, { a1[$1, $0] }, { b1[$0, $1] })
        r2 = Self.product(m, n, k, { a2[$1, $0] }, { b1[$0, $1] })
      case .sameC:
        r1 = Self.product(m, n, k, { a1[$0, $1] }, { b1[$0, $1] })
        r2 = Self.product(m, n, k, { a2[$0, $1] }, { b2[$0, $1] })
      }
      var worst: Double = 0
      for i in 0..<m {
        for j in 0..<n {
          let s = Double(start[i * ldc + j])
          let want1: Double, want2: Double
          switch kind {
          case .sharedA: want1 = r1[i * n + j]; want2 = r2[i * n + j]
          case .sharedB: want1 = s + r1[i * n + j]; want2 = s * 0.5 + r2[i * n + j]
          case .sameC: want1 = r1[i * n + j] + r2[i * n + j]; want2 = want1
          }
          let got2 = kind == .sameC ? c1[i * ldc + j] : c2[i * ldc + j]
          worst = max(worst, abs(Double(c1[i * ldc + j]) - want1) - Self.tolerance(k))
          worst = max(worst, abs(Double(got2) - want2) - Self.tolerance(k))
          #expect(visits[i * n + j] == 1, "\(what): [\(i), \(j)] seen \(visits[i * n + j]) times")
          #expect(seen[i * n + j] == c1[i * ldc + j] * got2 + 1, "\(what): [\(i), \(j)] seen before its final value")
        }
        // Columns past n are the caller's.
        #expect(c1[i * ldc + n] == start[i * ldc + n], "\(what): wrote past n")
      }
      #expect(worst <= 0, "\(what): error over tolerance by \(worst)")
    }
  }

  func withOperands(_ a1: Matrix, _ a2: Matrix, _ b1: Matrix, _ b2: Matrix,
                    _ body: (UnsafeRawPointer, UnsafeRawPointer, UnsafeRawPointer, UnsafeRawPointer) -> Void) {
    a1.values.withUnsafeBytes { p1 in a2.values.withUnsafeBytes { p2 in
      b1.values.withUnsafeBytes { p3 in b2.values.withUnsafeBytes { p4 in
        body(p1.baseAddress!, p2.baseAddress!, p3.baseAddress!, p4.baseAddress!)
      } }
    } }
  }

  /// A in spans of rows (one mc block each; two k blocks and, for f32,
  /// several column blocks on any L2 up to 2 MiB) gives the bits of A packed
  /// whole, for two products sharing A; the epilogue sees every element
  /// once, after both products hold their final values there. Per ISA this
  /// CPU runs (the portable one where AVX2 does not), in f32 and on every
  /// bf16 microkernel that runs here (bf16 on the f32 kernels packs as f32).
  @Test func spansOfRowsGiveTheSameBits() {
    let paths = Kernels.availablePaths()
    if paths.contains(.avx2) { spansOfRows(AVX2Kernels.self, "avx2") } else { spansOfRows(PortableKernels.self, "portable") }
    if paths.contains(.avx512) { spansOfRows(AVX512Kernels.self, "avx512") }
  }

  func spansOfRows<K: KernelISA>(_: K.Type, _ name: String) {
    let m = 150, n = 1500, k = 300
    var rng = Rng(seed: 43)
    let a = Matrix(m, k, pad: 3, &rng), b1 = Matrix(k, n, pad: 0, &rng), b2 = Matrix(k, n, pad: 0, &rng)
    let bf16Kernels = K.bf16PanelsFit ? [BF16Kernels.avx512bf16, .amx].filter(\.runsHere) : []
    for (compute, kernels) in [(ComputePrecision.f32, BF16Kernels.fallback)] + bf16Kernels.map({ (.bf16, $0) }) {
      func run(spanBytes: Int) -> (c1: [Float], c2: [Float], seen: [Int], products: [Float]) {
        var c1 = [Float](repeating: .nan, count: m * n), c2 = c1, products = c1
        var seen = [Int](repeating: 0, count: m * n)
        a.values.withUnsafeBytes { pa in b1.values.withUnsafeBytes { pb1 in b2.values.withUnsafeBytes { pb2 in
          c1.withUnsafeMutableBufferPointer { pc1 in c2.withUnsafeMutableBufferPointer { pc2 in
            let x = MatrixOperand(base: pa.baseAddress!, ld: a.ld)
            let p = GEMMProblem(m: m, n: n, k: k, a: x, b: MatrixOperand(base: pb1.baseAddress!, ld: n),
                                c: pc1.baseAddress!, ldc: n, accumulate: false, compute: compute)
            let q = GEMMProblem(m: m, n: n, k: k, a: x, b: MatrixOperand(base: pb2.baseAddress!, ld: n),
                                c: pc2.baseAddress!, ldc: n, accumulate: false, compute: compute)
            PackedGEMM.run(K.self, p, q, bf16: kernels, aSpanBytes: spanBytes) { r0, rows, c0, cols in
              for i in r0..<(r0 + rows) {
                for j in c0..<(c0 + cols) {
                  seen[i * n + j] += 1
                  products[i * n + j] = pc1[i * n + j] * pc2[i * n + j]
                }
              }
            }
          } }
        } } }
        return (c1, c2, seen, products)
      }
      let whole = run(spanBytes: gemmASpanBytes), spans = run(spanBytes: 1)
      let label = "\(name) \(compute) on \(kernels.rawValue)"
      #expect(whole.c1.allSatisfy(\.isFinite) && whole.c2.allSatisfy(\.isFinite), "\(label): product not written")
      let differ1 = zip(spans.c1, whole.c1).filter { $0.bitPattern != $1.bitPattern }.count
      let differ2 = zip(spans.c2, whole.c2).filter { $0.bitPattern != $1.bitPattern }.count
      #expect(differ1 == 0 && differ2 == 0, "\(label): \(differ1) and \(differ2) elements differ in spans")
      for r in [whole, spans] {
        #expect(r.seen.allSatisfy { $0 == 1 }, "\(label): epilogue saw an element other than once")
        #expect(zip(r.products, zip(r.c1, r.c2)).allSatisfy { $0.bitPattern == ($1.0 * $1.1).bitPattern },
                "\(label): epilogue ran before both products were final")
      }
    }
  }

  /// One product with an epilogue, and two products of different shapes (run
  /// one after the other), give the plain product's bits.
  @Test(arguments: Kernels.availablePaths())
  func singleAndMismatchedMatchThePlainProduct(path: KernelPath) {
    let m = 40, n = 37, k = 300
    var rng = Rng(seed: 9)
    let a = Matrix(m, k, pad: 1, &rng), b = Matrix(k, n, pad: 0, &rng)
    func plain() -> [Float] {
      var c = [Float](repeating: 0, count: m * n)
      a.values.withUnsafeBytes { pa in b.values.withUnsafeBytes { pb in c.withUnsafeMutableBufferPointer { pc in
        Kernels.gemm(GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: pa.baseAddress!, ld: a.ld),
                                 b: MatrixOperand(base: pb.baseAddress!, ld: b.ld), c: pc.baseAddress!, ldc: n,
                                 accumulate: false), path: path)
      } } }
      return c
    }
    let want = plain()
    var c = [Float](repeating: 0, count: m * n), d = [Float](repeating: 0, count: 3 * 5)
    var covered = 0
    a.values.withUnsafeBytes { pa in b.values.withUnsafeBytes { pb in c.withUnsafeMutableBufferPointer { pc in
      d.withUnsafeMutableBufferPointer { pd in
        let p = GEMMProblem(m: m, n: n, k: k, a: MatrixOperand(base: pa.baseAddress!, ld: a.ld),
                            b: MatrixOperand(base: pb.baseAddress!, ld: b.ld), c: pc.baseAddress!, ldc: n,
                            accumulate: false)
        Kernels.gemmFused(p, nil, path: path) { _, rows, _, cols in covered += rows * cols }
        #expect(covered == m * n, "\(path.rawValue): epilogue covered \(covered) of \(m * n)")
        // A 3 x 5 corner as the second product: shapes differ, so no shared loop.
        let q = GEMMProblem(m: 3, n: 5, k: k, a: p.a, b: p.b, c: pd.baseAddress!, ldc: 5, accumulate: false)
        covered = 0
        Kernels.gemmFused(p, q, path: path) { _, rows, _, cols in covered += rows * cols }
        #expect(covered == m * n, "\(path.rawValue): epilogue covered \(covered) of \(m * n)")
      }
    } } }
    #expect(c.map(\.bitPattern) == want.map(\.bitPattern), "\(path.rawValue): fused single product differs")
    for i in 0..<3 {
      for j in 0..<5 {
        // The library's kernels give every element the same bits whatever the
        // shape; OpenBLAS may pick another kernel for a small product.
        if path.table != nil {
          #expect(d[i * 5 + j].bitPattern == want[i * n + j].bitPattern, "\(path.rawValue): corner [\(i), \(j)]")
        } else {
          #expect(abs(d[i * 5 + j] - want[i * n + j]) <= 1e-3, "\(path.rawValue): corner [\(i), \(j)]")
        }
      }
    }
  }

  /// The layer's phase 1 as fused (GEMM.xWtPair with SwiGLU per strip) against
  /// two separate products and one SwiGLU pass: the same bits, on the
  /// streaming path for few tokens and the packed path beyond; f32 and bf16
  /// weights; and the same bits on a second run.
  @Test(arguments: [1, 5, 16, 17, 70], [DType.f32, .bf16])
  func gateUpSwiGLUMatchesSeparatePasses(tokens n: Int, dtype: DType) {
    let rows = 150, k = 300, ldx = k + 4, ldc = rows + 6
    var rng = Rng(seed: UInt64(n * 2 + (dtype == .bf16 ? 1 : 0)))
    let x = (0..<(n * ldx)).map { _ in Float(rng.normal()) }
    let wf = (0..<(2 * rows * k)).map { _ in Float(rng.normal()) * 0.1 }
    let wb = wf.map(floatToBF16)
    let scratchFloats = 64 * k
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchFloats)
    defer { scratch.deallocate() }
    func run(fused: Bool) -> (g: [Float], u: [Float], a: [Float]) {
      var g = [Float](repeating: 7, count: n * ldc), u = g, a = g
      let body: (UnsafeRawPointer) -> Void = { base in
        let w1 = WeightMatrix(base: base, dtype: dtype, ld: k)
        let w2 = w1.offset(row: rows, col: 0)
        x.withUnsafeBufferPointer { px in g.withUnsafeMutableBufferPointer { pg in
          u.withUnsafeMutableBufferPointer { pu in a.withUnsafeMutableBufferPointer { pa in
            let gp = pg.baseAddress!, up = pu.baseAddress!, ap = pa.baseAddress!
            if fused {
              GEMM.xWtPair(n: n, rows: rows, k: k, x: px.baseAddress!, ldx: ldx, w1: w1, c1: gp, w2: w2, c2: up,
                           ldc: ldc, scratch: scratch, scratchFloats: scratchFloats) { r0, nr, c0, cols in
                for i in r0..<(r0 + nr) {
                  swigluForward(gate: gp + i * ldc + c0, up: up + i * ldc + c0, out: ap + i * ldc + c0, count: cols)
                }
              }
            } else {
              GEMM.xWt(n: n, rows: rows, k: k, x: px.baseAddress!, ldx: ldx, w: w1, c: gp, ldc: ldc,
                       accumulate: false, scratch: scratch, scratchFloats: scratchFloats)
              GEMM.xWt(n: n, rows: rows, k: k, x: px.baseAddress!, ldx: ldx, w: w2, c: up, ldc: ldc,
                       accumulate: false, scratch: scratch, scratchFloats: scratchFloats)
              for i in 0..<n { swigluForward(gate: gp + i * ldc, up: up + i * ldc, out: ap + i * ldc, count: rows) }
            }
          } }
        } }
      }
      if dtype == .f32 { wf.withUnsafeBytes { body($0.baseAddress!) } } else { wb.withUnsafeBytes { body($0.baseAddress!) } }
      return (g, u, a)
    }
    let fused = run(fused: true), again = run(fused: true), separate = run(fused: false)
    let what = "n=\(n) \(dtype.name)"
    #expect(fused.g.map(\.bitPattern) == separate.g.map(\.bitPattern), "\(what): g")
    #expect(fused.u.map(\.bitPattern) == separate.u.map(\.bitPattern), "\(what): u")
    // SwiGLU runs on strips whose edges are multiples of 16 columns: the same
    // vector and tail code as one pass over the row.
    #expect(fused.a.map(\.bitPattern) == separate.a.map(\.bitPattern), "\(what): a")
    #expect(fused.a.map(\.bitPattern) == again.a.map(\.bitPattern), "\(what): a on a second run")
    // And against the definition: a = silu(g) * u with g, u the Double products.
    for i in 0..<n {
      for j in 0..<rows {
        var g: Double = 0, u: Double = 0
        for t in 0..<k {
          let w1 = dtype == .bf16 ? bf16ToFloat(wb[j * k + t]) : wf[j * k + t]
          let w2 = dtype == .bf16 ? bf16ToFloat(wb[(rows + j) * k + t]) : wf[(rows + j) * k + t]
          g += Double(x[i * ldx + t]) * Double(w1)
          u += Double(x[i * ldx + t]) * Double(w2)
        }
        let want = Double(SwiGLUReference.forward(Float(g), Float(u)))
        #expect(abs(Double(fused.a[i * ldc + j]) - want) <= 1e-4 * max(1, abs(want)), "\(what) [\(i), \(j)]")
      }
      #expect(fused.a[i * ldc + rows] == 7, "\(what): wrote past the block")
    }
  }

  /// GEMM.aWSum and GEMM.atBPair (the backward's fused pairs) against Double
  /// products, on the streaming and the packed paths.
  @Test(arguments: [3, 16, 17, 60])
  func backwardPairsMatchReference(tokens n: Int) {
    let k = 90, cols = 40, lda = k + 2, ldc = cols + 3
    var rng = Rng(seed: UInt64(100 + n))
    let a1 = (0..<(n * lda)).map { _ in Float(rng.normal()) }, a2 = (0..<(n * lda)).map { _ in Float(rng.normal()) }
    let w = (0..<(2 * k * cols)).map { _ in Float(rng.normal()) }
    let b = (0..<(n * ldc)).map { _ in Float(rng.normal()) }
    var c = [Float](repeating: 3, count: n * ldc)
    // atB: c1, c2 [k, cols] += a^T[k, n] b[n, cols] (a read as [n, k] with lda).
    let g0 = (0..<(k * ldc)).map { _ in Float(rng.normal()) }
    var g1 = g0, g2 = g0
    a1.withUnsafeBufferPointer { p1 in a2.withUnsafeBufferPointer { p2 in w.withUnsafeBytes { pw in
      b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
        g1.withUnsafeMutableBufferPointer { q1 in g2.withUnsafeMutableBufferPointer { q2 in
          let w1 = WeightMatrix(base: pw.baseAddress!, dtype: .f32, ld: cols)
          GEMM.aWSum(n: n, cols: cols, k: k, a1: p1.baseAddress!, w1: w1, a2: p2.baseAddress!,
                     w2: w1.offset(row: k, col: 0), lda: lda, c: pc.baseAddress!, ldc: ldc)
          GEMM.atBPair(n: n, m: k, cols: cols, a1: p1.baseAddress!, a2: p2.baseAddress!, lda: lda,
                       b: pb.baseAddress!, ldb: ldc, c1: q1.baseAddress!, c2: q2.baseAddress!, ldc: ldc)
        } }
      } }
    } } }
    for i in 0..<n {
      for j in 0..<cols {
        var s: Double = 0
        for t in 0..<k {
          s += Double(a1[i * lda + t]) * Double(w[t * cols + j]) + Double(a2[i * lda + t]) * Double(w[(k + t) * cols + j])
        }
        #expect(abs(Double(c[i * ldc + j]) - s) <= Self.tolerance(2 * k), "aWSum n=\(n) [\(i), \(j)]")
      }
      #expect(c[i * ldc + cols] == 3, "aWSum n=\(n): wrote past cols")
    }
    for t in 0..<k {
      for j in 0..<cols {
        var s1 = Double(g0[t * ldc + j]), s2 = s1
        for i in 0..<n {
          s1 += Double(a1[i * lda + t]) * Double(b[i * ldc + j])
          s2 += Double(a2[i * lda + t]) * Double(b[i * ldc + j])
        }
        #expect(abs(Double(g1[t * ldc + j]) - s1) <= Self.tolerance(n), "atBPair n=\(n) first [\(t), \(j)]")
        #expect(abs(Double(g2[t * ldc + j]) - s2) <= Self.tolerance(n), "atBPair n=\(n) second [\(t), \(j)]")
      }
    }
  }

  /// Skewed routing: one expert with 90% of the rows still gives each worker
  /// about the same cost, since units cost rows x columns and the partition
  /// splits the busy expert's columns between workers.
  @Test(arguments: [2, 3, 8])
  func skewedRowsBalanceAcrossWorkers(workers: Int) {
    let F = 1536, H = 576, unit = PlacementPlan.alignment
    let rows = [3686] + [Int](repeating: 58, count: 7)
    var units: [(slice: Int, lo: Int, hi: Int, cost: Int)] = []
    for (e, n) in rows.enumerated() {
      for lo in stride(from: 0, to: F, by: unit) { units.append((e, lo, min(F, lo + unit), n * H * min(unit, F - lo))) }
    }
    let parts = MoELayer.partition(units, workers: workers)
    let total = units.reduce(0) { $0 + $1.cost }, largest = units.map(\.cost).max() ?? 0
    for (w, items) in parts.enumerated() {
      let cost = items.reduce(0) { $0 + rows[$1.slice] * H * $1.range.count }
      #expect(abs(Double(cost) - Double(total) / Double(workers)) <= Double(largest),
              "worker \(w) of \(workers): cost \(cost) vs mean \(total / workers)")
    }
    // The busy expert is split between workers.
    #expect(parts.filter { $0.contains { $0.slice == 0 } }.count == min(workers, F / unit))
  }
}
