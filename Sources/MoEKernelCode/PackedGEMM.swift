// The packed f32 matrix product behind every large GEMM of the library, written
// once and compiled per instruction set: the bodies here are @inlinable, and each
// ISA module (MoEKernelsAVX512, MoEKernelsAVX2, MoEKernelsPortable) instantiates
// them with its own vector type, so their code is generated with that module's
// target CPU. This module itself only declares; nothing here runs unspecialized.
//
// Scheme (as in Goto's GEMM): for each block of kc inner indices, the B block is
// packed into column panels of NR floats per row (kc x NR each, the block sized
// for L2), then for each block of mc rows A is packed into row panels of MR
// values per inner index, and a register-blocked microkernel computes each
// MR x NR tile of C from one A panel and one B panel (MR rows per ISA: 12 where
// 32 vector registers hold 24 accumulators, else 6). The f32 microkernel runs
// each A panel (the smaller, broadcast one) against all of the block's B panels
// in turn, so the A panel stays in L1 and the B panels stream from L2. Packing
// widens bf16 and reads either operand transposed, so one kernel serves x W^T,
// A W and A^T B.
// Accumulation order is fixed by the shapes alone: results are bit-identical
// from run to run for a given path.
//
// bf16 compute (GEMMProblem.compute == .bf16): both operands are rounded to
// bf16 (nearest even; NaN stays NaN; subnormals become zero, as vcvtneps2bf16
// rounds) and the products are summed in f32. The blocking, the fused second
// product and the epilogue are the same; only packing and the microkernel
// differ. Where the CPU runs AVX512-BF16 (and the path's tile is 6 x 32), the
// panels hold pairs of bf16 (half the bytes of f32 panels) and the microkernel
// is vdpbf16ps (CMoECPU/bf16.c): per lane and pair of inner indices 2p, 2p+1,
// sum += a[2p+1] b[2p+1], then sum += a[2p] b[2p], each rounded to f32. With
// AMX-BF16 the panels are the same pairs, the tile 32 x 32 and the
// microkernel tdpbf16ps on AMX tiles (inner blocks padded with zero pairs to
// multiples of 32 indices; the hardware's sum order within a block is its
// own, so only the bounds below hold, not an emulated order). Elsewhere
// (the fallback) the f32 panels are rounded to bf16 values once packed and the
// path's f32 microkernel sums them in index order. Each bf16 product is exact
// in f32, so both differ from the exact sum of the rounded operands' products
// by f32 accumulation only: at most about k * 2^-24 * sum_t |a_t b_t| (plus one
// rounding per kc block added into C); and from the f32 product of the
// unrounded operands by at most about 2^-7 * sum_t |a_t| |b_t| more (each
// operand rounds by at most 2^-8 of itself, bf16 keeping 8 significant bits),
// so by at most about k * 2^-7 * max|a| * max|b|.

import CMoECPU

/// One operand: element (i, j) is at base[i * ld + j], or base[j * ld + i] when
/// transposed; f32 or bf16 elements.
public struct MatrixOperand: @unchecked Sendable {
  public var base: UnsafeRawPointer
  public var ld: Int
  public var transposed: Bool
  public var bf16: Bool

  @inlinable
  public init(base: UnsafeRawPointer, ld: Int, transposed: Bool = false, bf16: Bool = false) {
    self.base = base
    self.ld = ld
    self.transposed = transposed
    self.bf16 = bf16
  }

  /// Whether `other` is this operand (same memory, leading dimension and layout).
  @inlinable @inline(__always)
  public func same(as other: MatrixOperand) -> Bool {
    base == other.base && ld == other.ld && transposed == other.transposed && bf16 == other.bf16
  }

  /// Element (i, j) as f32.
  @inlinable @inline(__always)
  public func value(_ i: Int, _ j: Int) -> Float {
    let index = transposed ? j * ld + i : i * ld + j
    if bf16 {
      let bits = base.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self)
      return Float(bitPattern: UInt32(bits) << 16)
    }
    return base.loadUnaligned(fromByteOffset: 4 * index, as: Float.self)
  }
}

/// Precision of a product's multiplications: f32, or both operands rounded
/// to bf16 with f32 sums (see the top of this file).
public enum ComputePrecision: UInt8, Sendable {
  case f32, bf16
}

/// The bf16 value `x` becomes as a bf16-compute operand (nearest even; NaN
/// stays NaN, quieted; subnormals become zero of the same sign), as f32.
@inlinable @inline(__always)
public func bf16ComputeOperand(_ x: Float) -> Float {
  let bits = x.bitPattern
  if bits & 0x7F80_0000 == 0 { return Float(bitPattern: bits & 0x8000_0000) }
  if bits & 0x7FFF_FFFF > 0x7F80_0000 { return Float(bitPattern: (bits | 0x0040_0000) & 0xFFFF_0000) }
  return Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
}

/// c[m, n] (ldc) = a[m, k] * b[k, n], or += when accumulate.
public struct GEMMProblem: @unchecked Sendable {
  public var m: Int
  public var n: Int
  public var k: Int
  public var a: MatrixOperand
  public var b: MatrixOperand
  public var c: UnsafeMutablePointer<Float>
  public var ldc: Int
  public var accumulate: Bool
  /// Precision of the multiplications (the sums are f32 either way).
  public var compute: ComputePrecision

  @inlinable
  public init(m: Int, n: Int, k: Int, a: MatrixOperand, b: MatrixOperand,
              c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, compute: ComputePrecision = .f32) {
    self.m = m
    self.n = n
    self.k = k
    self.a = a
    self.b = b
    self.c = c
    self.ldc = ldc
    self.accumulate = accumulate
    self.compute = compute
  }
}

/// What an instruction set provides to the shared kernels: a vector of floats
/// and its multiply-add (fused where the ISA has FMA).
public protocol KernelISA {
  associatedtype V: SIMD & BitwiseCopyable where V.Scalar == Float
  /// acc + a * b
  static func madd(_ acc: V, _ a: V, _ b: V) -> V
  /// Inner indices per packed block (an A panel MR x kc stays in L1).
  static var kc: Int { get }
  /// Rows of A per packed block (mc x kc stays in L2 for the bf16
  /// microkernels); a multiple of tileRows and of MOE_BF16_MR.
  static var mc: Int { get }
  /// Rows of the f32 microkernel's tile: 6 or 12 (two accumulators per row,
  /// so 12 or 24 vector registers of them).
  static var tileRows: Int { get }
  /// Packs one B panel of a transposed f32 operand with register transposes:
  /// stored rows 0..<nr of src (ld apart), elements 0..<kc, into
  /// dst[t * nr + j]. Returns false where the ISA has none (the plain loop runs).
  static func packTransposed(_ src: UnsafePointer<Float>, ld: Int, kc: Int, nr: Int,
                             into dst: UnsafeMutablePointer<Float>) -> Bool
  /// Packs one A panel of a row-major f32 operand with register transposes:
  /// stored rows 0..<mr of src (ld apart, all present), elements 0..<kc, into
  /// dst[t * mr + i]. Returns false where the ISA has none (the plain loop runs).
  static func packRows(_ src: UnsafePointer<Float>, ld: Int, kc: Int, mr: Int,
                       into dst: UnsafeMutablePointer<Float>) -> Bool
}

extension KernelISA {
  @inlinable @inline(__always)
  public static var tileRows: Int { gemmMR }

  @inlinable @inline(__always)
  public static func packTransposed(_ src: UnsafePointer<Float>, ld: Int, kc: Int, nr: Int,
                                    into dst: UnsafeMutablePointer<Float>) -> Bool { false }

  @inlinable @inline(__always)
  public static func packRows(_ src: UnsafePointer<Float>, ld: Int, kc: Int, mr: Int,
                              into dst: UnsafeMutablePointer<Float>) -> Bool { false }
}

extension KernelISA {
  /// The vector at p (any alignment).
  @inlinable @inline(__always)
  public static func load(_ p: UnsafePointer<Float>) -> V {
    UnsafeRawPointer(p).loadUnaligned(as: V.self)
  }

  /// Stores v at p (any alignment).
  @inlinable @inline(__always)
  public static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
  }

  /// Whether the C bf16 microkernels' panels are this ISA's: B panels of two
  /// vectors of 16 floats, and A blocks of whole MOE_BF16_MR-row panels.
  @inlinable
  public static var bf16PanelsFit: Bool { 2 * V.scalarCount == Int(MOE_BF16_NR) && mc % Int(MOE_BF16_MR) == 0 }

  /// Where this instruction set's bf16 compute can run when `wanted` is
  /// asked for: there, if the CPU (and OS) run it and the C microkernels'
  /// panels are this ISA's (bf16PanelsFit), else the fallback.
  @inlinable
  public static func bf16Kernels(_ wanted: BF16Kernels) -> BF16Kernels {
    guard wanted != .fallback, bf16PanelsFit else { return .fallback }
    return wanted.runsHere ? wanted : .fallback
  }

  /// The dispatch table of this instruction set: the shared kernels, specialized
  /// (and so compiled) in the module that calls this with its own ISA, with
  /// bf16 compute on `bf16` where it runs (bf16Kernels), else the fallback.
  @inlinable
  public static func makeTable(name: String, fused: Bool, bf16: BF16Kernels = .fallback) -> KernelTable {
    let kernels = bf16Kernels(bf16)
    return KernelTable(name: name, width: V.scalarCount, fused: fused, bf16: kernels,
                       gemm: { PackedGEMM.run(Self.self, $0, bf16: kernels) },
                       gemmFused: { PackedGEMM.run(Self.self, $0, $1, bf16: kernels, epilogue: $2) },
                       fmaLoop: { FMALoop.run(Self.self, iterations: $0) })
  }
}

/// Rows of the microkernel's tile unless the ISA says otherwise (KernelISA.tileRows);
/// its columns are two vectors (NR = 2 * V.scalarCount).
public let gemmMR = 6
/// Columns of B packed at once for the bf16 (vdpbf16ps, AMX) microkernels,
/// whose B panel stays in L1 while the A panels stream past it.
public let gemmNC = 2048
/// Bytes of a packed B block (kc x nc) for the f32 microkernel, whose A panel
/// stays in L1 while the block's B panels stream past it from L2: half this
/// CPU's L2 (nc 1024 at kc 256 with 2 MiB of L2, 512 with 1 MiB).
public let gemmF32BlockBytes = moe_cpu_l2_bytes() / 2
/// Bytes of packed A kept for one k block: the rows of a span, whose panels
/// every column block of B then reads (from L2 or L3) instead of packing
/// them again. 4 MiB holds 4096 rows at kc 256.
public let gemmASpanBytes = 4 << 20
/// Columns of C per epilogue call of a fused product on the bf16 microkernels
/// (the last strip of a block may be narrower): mc rows of them, for both
/// products, stay in L2.
public let gemmEpilogueColumns = 64

/// Where bf16 compute runs.
public enum BF16Kernels: String, Sendable, CaseIterable {
  /// tdpbf16ps on AMX tiles over pair-interleaved bf16 panels.
  case amx = "amx_bf16"
  /// vdpbf16ps over pair-interleaved bf16 panels.
  case avx512bf16 = "avx512_bf16"
  /// Operands rounded to bf16 while packing, then the path's f32 microkernel.
  case fallback

  /// Whether the CPU and the OS run these kernels (for AMX: and the process
  /// was granted the tile state).
  @inlinable
  public var runsHere: Bool {
    switch self {
    case .amx: return moe_amx_native() != 0
    case .avx512bf16: return moe_bf16_native() != 0
    case .fallback: return true
    }
  }
}

public enum PackedGEMM {
  /// Runs `p` on the calling thread with ISA `K` (bf16 compute on `bf16`;
  /// the caller has checked that it runs here).
  @inlinable @inline(__always)
  public static func run<K: KernelISA>(_: K.Type, _ p: GEMMProblem, bf16: BF16Kernels = .fallback,
                                       aSpanBytes: Int = gemmASpanBytes) {
    blocked(K.self, p, p, count: 1, bf16: bf16, aSpanBytes: aSpanBytes) { _, _, _, _ in }
  }

  /// Runs `p` (and `q`, when given, in the same blocked loop) on the calling
  /// thread with ISA `K`, then calls `epilogue(row0, rows, col0, cols)` on each
  /// finished part of C while it is in cache, once both products hold their
  /// final values there: on the f32 microkernel each panel of MR rows across
  /// the block's columns, top to bottom; on the bf16 ones each strip of at
  /// most mc rows by gemmEpilogueColumns, left to right within each block of
  /// rows. `q` has p's m, n and k; an
  /// operand equal to p's (same memory and layout) is packed once for both,
  /// and q may write p's C (with accumulate) to add the two products.
  @inlinable @inline(__always)
  public static func run<K: KernelISA>(_: K.Type, _ p: GEMMProblem, _ q: GEMMProblem?, bf16: BF16Kernels = .fallback,
                                       aSpanBytes: Int = gemmASpanBytes, epilogue: (Int, Int, Int, Int) -> Void) {
    guard let q else {
      blocked(K.self, p, p, count: 1, bf16: bf16, aSpanBytes: aSpanBytes, epilogue: epilogue)
      return
    }
    if q.m == p.m && q.n == p.n && q.k == p.k && q.compute == p.compute {
      blocked(K.self, p, q, count: 2, bf16: bf16, aSpanBytes: aSpanBytes, epilogue: epilogue)
    } else {
      // Different shapes share no loop: one after the other, then the epilogue over p's C.
      blocked(K.self, p, p, count: 1, bf16: bf16, aSpanBytes: aSpanBytes) { _, _, _, _ in }
      blocked(K.self, q, q, count: 1, bf16: bf16, aSpanBytes: aSpanBytes) { _, _, _, _ in }
      if p.m > 0 && p.n > 0 { epilogue(0, p.m, 0, p.n) }
    }
  }

  /// The blocked loop over `count` (1 or 2) products of equal shape: products
  /// [p, q].prefix(count). Loops: spans of rows (all m unless A's panels
  /// outgrow aSpanBytes), k blocks (pc), column blocks (jc), mc blocks
  /// (ic). A is packed per (span, pc) in mc blocks, B per (span, pc, jc),
  /// each once when both products share it; for each tile the microkernel
  /// runs every product, and the epilogue sees the finished parts in the
  /// last k block. Each element's sum runs over the k blocks in order, as in
  /// a loop with jc outermost.
  /// With bf16 compute, panels are packed by CMoECPU's bf16 routines and
  /// tiles computed by its vdpbf16ps or AMX microkernel as `bf16` says, else
  /// packed as f32, rounded to bf16 values, and computed by the f32 microkernel.
  @inlinable @inline(__always)
  static func blocked<K: KernelISA>(_: K.Type, _ p: GEMMProblem, _ q: GEMMProblem, count: Int, bf16 bf16Kernels: BF16Kernels,
                                    aSpanBytes: Int, epilogue: (Int, Int, Int, Int) -> Void) {
    let m = p.m, n = p.n, k = p.k
    guard m > 0, n > 0 else { return }
    if k <= 0 {
      for o in 0..<count {
        let r = o == 0 ? p : q
        if !r.accumulate { for i in 0..<m { (r.c + i * r.ldc).update(repeating: 0, count: n) } }
      }
      epilogue(0, m, 0, n)
      return
    }
    let bf16 = p.compute == .bf16
    // Pair-interleaved bf16 panels and vdpbf16ps or AMX tiles; their panels
    // take `steps` words (pairs of inner indices) per row or column where f32
    // panels take kc floats. Their microkernels keep one B panel in L1 while
    // the block's A panels stream past it from L2 (for each NR-column panel,
    // every A panel): with kc 256, mc 144 (AVX-512) a B panel is 16 KiB of a
    // 48 KiB L1d and an A block 72 KiB of a 2 MiB L2. AMX takes A in panels
    // of 32 rows and steps in 16s, with kc 512 and mc 128 (an A block of 128
    // KiB, a B panel of 32 KiB): its tiles do a block's work in a sixth of
    // the time, so fewer, longer blocks.
    let native = bf16 && bf16Kernels != .fallback && K.bf16PanelsFit
    let amx = native && bf16Kernels == .amx
    let MR = amx ? Int(MOE_AMX_MR) : native ? Int(MOE_BF16_MR) : K.tileRows, NR = 2 * K.V.scalarCount, epilogueColumns = max(NR, gemmEpilogueColumns)
    // k in equal blocks of at most K.kc (512 for AMX; multiples of 8): no
    // short last block that would cost a full pass over C.
    let kcLimit = amx ? 512 : K.kc
    let kBlocks = (k + kcLimit - 1) / kcLimit
    let kcMax = min(kcLimit, ((k + kBlocks - 1) / kBlocks + 7) / 8 * 8), mcMax = amx ? 128 : K.mc
    // The limit on nc: a multiple of 64 (and so of NR), between 256 and gemmNC.
    let ncLimit = native ? gemmNC : max(256, min(gemmNC, gemmF32BlockBytes / (4 * kcMax) / 64 * 64))
    // n in equal blocks of at most ncLimit (multiples of NR): no short last
    // block that would pack all of A again for a few columns (1536 columns
    // under a limit of 1344: two blocks of 768, not 1344 and 192).
    let nBlocks = (n + ncLimit - 1) / ncLimit
    let ncMax = ((n + nBlocks - 1) / nBlocks + NR - 1) / NR * NR
    // Inner-index steps per panel row for a block of kc: pairs when native,
    // padded to whole tiles for AMX.
    func panelSteps(_ kc: Int) -> Int { amx ? ((kc + 1) / 2 + 15) / 16 * 16 : native ? (kc + 1) / 2 : kc }
    // The second product's own packed operands, when it does not share p's.
    let ownA = count > 1 && !q.a.same(as: p.a), ownB = count > 1 && !q.b.same(as: p.b)
    // Rows of A packed per k block: all m when their panels fit
    // aSpanBytes, else spans of whole mc blocks that do (at least one). A span's
    // panels serve every column block, so A is packed once per k block (not
    // once per column block: with nc 256, as 512 KiB of L2 gives, a
    // 768-column product packed all of A three times).
    let wordsPerRow = max(kcMax, panelSteps(kcMax))
    let spanLimit = max(mcMax, aSpanBytes / (4 * wordsPerRow) / mcMax * mcMax)
    let spanMax = min(m, spanLimit)
    let aStride = (spanMax + MR - 1) / MR * MR * wordsPerRow, bStride = ncMax * wordsPerRow
    guard let bufA = moe_thread_buffer(0, (ownA ? 2 : 1) * aStride),
          let bufB = moe_thread_buffer(1, (ownB ? 2 : 1) * bStride) else {
      // No memory for packing: the plain loop (slow, but an answer).
      reference(p)
      if count > 1 { reference(q) }
      epilogue(0, m, 0, n)
      return
    }
    let bufA2 = ownA ? bufA + aStride : bufA, bufB2 = ownB ? bufB + bStride : bufB
    func pack(_ b: MatrixOperand, rows: Int, kc: Int, cols: Int, nc: Int, into dst: UnsafeMutablePointer<Float>) {
      if native {
        moe_bf16_pack_b(b.base, b.ld, b.transposed ? 1 : 0, b.bf16 ? 1 : 0, rows, kc, cols, nc, panelSteps(kc),
                        UnsafeMutableRawPointer(dst).assumingMemoryBound(to: UInt32.self))
        return
      }
      packB(K.self, b, rows: rows, kc: kc, cols: cols, nc: nc, into: dst)
      if bf16 { roundToBF16(K.self, dst, count: (nc + NR - 1) / NR * NR * kc) }
    }
    func pack(_ a: MatrixOperand, rows: Int, mc: Int, cols: Int, kc: Int, into dst: UnsafeMutablePointer<Float>) {
      if amx {
        moe_amx_pack_a(a.base, a.ld, a.transposed ? 1 : 0, a.bf16 ? 1 : 0, rows, mc, cols, kc, panelSteps(kc),
                       UnsafeMutableRawPointer(dst).assumingMemoryBound(to: UInt32.self))
        return
      }
      if native {
        moe_bf16_pack_a(a.base, a.ld, a.transposed ? 1 : 0, a.bf16 ? 1 : 0, rows, mc, cols, kc,
                        UnsafeMutableRawPointer(dst).assumingMemoryBound(to: UInt32.self))
        return
      }
      packA(K.self, a, tileRows: MR, rows: rows, mc: mc, cols: cols, kc: kc, into: dst)
      if bf16 { roundToBF16(K.self, dst, count: (mc + MR - 1) / MR * MR * kc) }
    }
    if amx { moe_amx_begin() }
    defer { if amx { moe_amx_end() } }
    var span = 0
    while span < m {
      let spanRows = min(spanMax, m - span)
      var pc = 0
      while pc < k {
        let kc = min(kcMax, k - pc)
        let steps = panelSteps(kc)
        let last = pc + kc == k
        // The span's A blocks, each mc rows from its own offset (mc blocks
        // start at the same rows as without spans: the same tiles).
        var ic = span
        while ic < span + spanRows {
          let mc = min(mcMax, span + spanRows - ic)
          pack(p.a, rows: ic, mc: mc, cols: pc, kc: kc, into: bufA + (ic - span) * steps)
          if ownA { pack(q.a, rows: ic, mc: mc, cols: pc, kc: kc, into: bufA2 + (ic - span) * steps) }
          ic += mc
        }
        var jc = 0
        while jc < n {
          let nc = min(ncMax, n - jc)
          pack(p.b, rows: pc, kc: kc, cols: jc, nc: nc, into: bufB)
          if ownB { pack(q.b, rows: pc, kc: kc, cols: jc, nc: nc, into: bufB2) }
          ic = span
          while ic < span + spanRows {
            let mc = min(mcMax, span + spanRows - ic)
            // The block's corner as constants: a nested function that read the
            // loop variables would check exclusive access on every call.
            let row0 = ic, col0 = jc, first = pc == 0, aOffset = (ic - span) * steps
            @inline(__always) func tile(_ o: Int, _ ir: Int, _ jr: Int) {
              let r = o == 0 ? p : q
              let aBlock = (o == 0 ? bufA : bufA2) + aOffset
              let bPanel = UnsafePointer((o == 0 ? bufB : bufB2) + (jr / NR) * steps * NR)
              let accumulate = r.accumulate || !first
              let nr = min(NR, nc - jr)
              let aPanel = UnsafePointer(aBlock + (ir / MR) * steps * MR)
              let c = r.c + (row0 + ir) * r.ldc + col0 + jr, mr = min(MR, mc - ir)
              if amx {
                moe_amx_micro(steps, UnsafeRawPointer(aPanel).assumingMemoryBound(to: UInt32.self),
                              UnsafeRawPointer(bPanel).assumingMemoryBound(to: UInt32.self),
                              c, r.ldc, Int32(mr), Int32(nr), accumulate ? 1 : 0)
              } else if native {
                moe_bf16_micro(steps, UnsafeRawPointer(aPanel).assumingMemoryBound(to: UInt32.self),
                               UnsafeRawPointer(bPanel).assumingMemoryBound(to: UInt32.self),
                               c, r.ldc, Int32(mr), Int32(nr), accumulate ? 1 : 0)
              } else {
                micro(K.self, rows: MR, kc: kc, a: aPanel, b: bPanel, c: c, ldc: r.ldc, mr: mr, nr: nr,
                      accumulate: accumulate)
              }
            }
            if !native {
              // The f32 microkernel: each A panel (MR x kc, 12 KiB at MR 12)
              // stays in L1 while the block's B panels (kc x NR, 32 KiB at NR
              // 32) stream past it from L2; the larger panel in L1 beside the
              // streaming one would crowd it out (2-8% slower per product on
              // Emerald Rapids). Each tile's sum order is the same either way.
              // The epilogue takes each panel's rows across the block as soon
              // as their tiles are done: C's rows still in cache, and each row
              // read front to back (strips of a few columns down all mc rows
              // touched 256 bytes per row, which the prefetchers do not follow).
              var ir = 0
              while ir < mc {
                var jr = 0
                while jr < nc {
                  for o in 0..<count { tile(o, ir, jr) }
                  jr += NR
                }
                if last { epilogue(ic + ir, min(MR, mc - ir), jc, nc) }
                ir += MR
              }
            } else {
              var jr = 0, handed = 0
              while jr < nc {
                let nr = min(NR, nc - jr)
                for o in 0..<count {
                  var ir = 0
                  while ir < mc {
                    tile(o, ir, jr)
                    ir += MR
                  }
                }
                // The epilogue takes strips of at least gemmEpilogueColumns (a
                // multiple of 16): few calls, and whole 16-float groups on every ISA.
                let end = jr + nr
                if last && (end - handed >= epilogueColumns || end == nc) {
                  epilogue(ic, mc, jc + handed, end - handed)
                  handed = end
                }
                jr += NR
              }
            }
            ic += mc
          }
          jc += nc
        }
        pc += kc
      }
      span += spanRows
    }
  }

  /// A rows r0..<r0+mc, inner indices c0..<c0+kc into panels of MR rows
  /// (tileRows: 6 or 12): panel q holds, for each inner index, MR values (zero
  /// beyond the last row).
  @inlinable @inline(__always)
  static func packA<K: KernelISA>(_: K.Type, _ a: MatrixOperand, tileRows MR: Int, rows r0: Int, mc: Int, cols c0: Int,
                                  kc: Int, into dst: UnsafeMutablePointer<Float>) {
    if a.transposed && !a.bf16 {
      // The MR values of one inner index are contiguous: a stored row's.
      packRowsAcross(K.self, a.base.assumingMemoryBound(to: Float.self) + c0 * a.ld + r0, ld: a.ld, count: kc,
                     width: mc, panel: MR, into: dst)
      return
    }
    var q = 0
    while q * MR < mc {
      let panel = dst + q * kc * MR
      let i0 = r0 + q * MR, rows = min(MR, mc - q * MR)
      if !a.bf16 && !a.transposed && rows == MR,
         K.packRows(a.base.assumingMemoryBound(to: Float.self) + i0 * a.ld + c0, ld: a.ld, kc: kc, mr: MR,
                    into: panel) {
        // A whole panel, transposed in registers.
      } else if !a.bf16 && !a.transposed && rows == MR && MR % 6 == 0 {
        // Six rows side by side at a time: each inner index writes one
        // contiguous group of six.
        let ld = a.ld
        for g in stride(from: 0, to: MR, by: 6) {
          let s0 = a.base.assumingMemoryBound(to: Float.self) + (i0 + g) * ld + c0
          let s1 = s0 + ld, s2 = s1 + ld, s3 = s2 + ld, s4 = s3 + ld, s5 = s4 + ld
          var out = panel + g
          for t in 0..<kc {
            out[0] = s0[t]; out[1] = s1[t]; out[2] = s2[t]
            out[3] = s3[t]; out[4] = s4[t]; out[5] = s5[t]
            out += MR
          }
        }
      } else if !a.bf16 && !a.transposed {
        let base = a.base.assumingMemoryBound(to: Float.self)
        for i in 0..<MR {
          if i < rows {
            let src = base + (i0 + i) * a.ld + c0
            for t in 0..<kc { panel[t &* MR &+ i] = src[t] }
          } else {
            for t in 0..<kc { panel[t &* MR &+ i] = 0 }
          }
        }
      } else {
        for t in 0..<kc {
          for i in 0..<MR { panel[t * MR + i] = i < rows ? a.value(i0 + i, c0 + t) : 0 }
        }
      }
      q += 1
    }
  }

  /// B rows r0..<r0+kc, columns c0..<c0+nc into panels of NR columns: panel q
  /// holds, for each row, NR values (zero beyond the last column).
  @inlinable @inline(__always)
  static func packB<K: KernelISA>(_: K.Type, _ b: MatrixOperand, rows r0: Int, kc: Int, cols c0: Int, nc: Int,
                                  into dst: UnsafeMutablePointer<Float>) {
    let NR = 2 * K.V.scalarCount
    if !b.transposed && !b.bf16 {
      packRowsAcross(K.self, b.base.assumingMemoryBound(to: Float.self) + r0 * b.ld + c0, ld: b.ld, count: kc,
                     width: nc, panel: NR, into: dst)
      return
    }
    var q = 0
    while q * NR < nc {
      let panel = dst + q * kc * NR
      let j0 = c0 + q * NR, cols = min(NR, nc - q * NR)
      if b.transposed {
        // Row j of the stored matrix is column j of B: walk each stored row once.
        if cols < NR { panel.update(repeating: 0, count: kc * NR) }
        if b.bf16 {
          let base = b.base.assumingMemoryBound(to: UInt16.self)
          for j in 0..<cols {
            let src = base + (j0 + j) * b.ld + r0
            for t in 0..<kc { panel[t * NR + j] = Float(bitPattern: UInt32(src[t]) << 16) }
          }
        } else if cols == NR, K.packTransposed(b.base.assumingMemoryBound(to: Float.self) + j0 * b.ld + r0,
                                                 ld: b.ld, kc: kc, nr: NR, into: panel) {
          // A whole panel, transposed in registers.
        } else {
          // Inner index outer: each step writes one contiguous row of the panel and
          // advances every stored row by one element.
          let base = b.base.assumingMemoryBound(to: Float.self) + j0 * b.ld + r0
          let ld = b.ld
          var out = panel
          for t in 0..<kc {
            var src = base + t
            for j in 0..<cols {
              out[j] = src.pointee
              src += ld
            }
            out += NR
          }
        }
      } else {
        // bf16 (f32 went through packRowsAcross).
        let base = b.base.assumingMemoryBound(to: UInt16.self)
        for t in 0..<kc {
          let row = panel + t * NR, src = base + (r0 + t) * b.ld + j0
          for j in 0..<cols { row[j] = Float(bitPattern: UInt32(src[j]) << 16) }
          for j in cols..<NR { row[j] = 0 }
        }
      }
      q += 1
    }
  }

  /// Stored rows 0..<count of src (ld apart), elements 0..<width of each,
  /// into panels of `panel` values per row: panel q holds, for each row t,
  /// elements q * panel ..< (q + 1) * panel at dst[q * count * panel + t *
  /// panel] (zero beyond width). Eight rows at a time, each read front to back
  /// across the panels: eight sequential streams the hardware prefetchers
  /// follow, and each panel written in runs of eight rows. (Row by row within
  /// one panel, every row would start a new cache line, mostly on a new page.)
  @inlinable @inline(__always)
  static func packRowsAcross<K: KernelISA>(_: K.Type, _ src: UnsafePointer<Float>, ld: Int, count: Int, width: Int,
                                          panel: Int, into dst: UnsafeMutablePointer<Float>) {
    let full = width / panel, tail = width - full * panel, stride = count * panel
    let group = 8
    var t0 = 0
    while t0 < count {
      let t1 = min(count, t0 + group)
      for q in 0..<full {
        let from = src + q * panel, to = dst + q * stride
        for t in t0..<t1 { copyFloats(K.self, from + t * ld, to + t * panel, panel) }
      }
      if tail > 0 {
        let from = src + full * panel, to = dst + full * stride
        for t in t0..<t1 {
          copyFloats(K.self, from + t * ld, to + t * panel, tail)
          (to + t * panel + tail).update(repeating: 0, count: panel - tail)
        }
      }
      t0 = t1
    }
  }

  /// n floats from src to dst: whole vectors of the ISA, then four at a time
  /// while four remain.
  @inlinable @inline(__always)
  static func copyFloats<K: KernelISA>(_: K.Type, _ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
                                      _ n: Int) {
    let from = UnsafeRawPointer(src), to = UnsafeMutableRawPointer(dst), W = K.V.scalarCount
    var i = 0
    while i + W <= n {
      K.store(K.load(src + i), dst + i)
      i += W
    }
    while i + 4 <= n {
      to.storeBytes(of: from.loadUnaligned(fromByteOffset: 4 * i, as: SIMD4<Float>.self), toByteOffset: 4 * i,
                    as: SIMD4<Float>.self)
      i += 4
    }
    while i < n {
      dst[i] = src[i]
      i += 1
    }
  }

  /// Packed f32 values rounded to bf16 values in place (bf16ComputeOperand,
  /// 16 at a time): the fallback's operands.
  @inlinable @inline(__always)
  static func roundToBF16<K: KernelISA>(_: K.Type, _ values: UnsafeMutablePointer<Float>, count: Int) {
    typealias Bits = SIMD16<UInt32>
    let raw = UnsafeMutableRawPointer(values)
    let exponent = Bits(repeating: 0x7F80_0000), magnitude = Bits(repeating: 0x7FFF_FFFF)
    let sign = Bits(repeating: 0x8000_0000), high = Bits(repeating: 0xFFFF_0000)
    let quiet = Bits(repeating: 0x0040_0000), bias = Bits(repeating: 0x7FFF), one = Bits(repeating: 1)
    var i = 0
    while i + 16 <= count {
      let bits = raw.loadUnaligned(fromByteOffset: 4 * i, as: Bits.self)
      var rounded = (bits &+ bias &+ ((bits &>> 16) & one)) & high
      rounded.replace(with: (bits | quiet) & high, where: (bits & magnitude) .> exponent)
      rounded.replace(with: bits & sign, where: (bits & exponent) .== Bits())
      raw.storeBytes(of: rounded, toByteOffset: 4 * i, as: Bits.self)
      i += 16
    }
    while i < count {
      values[i] = bf16ComputeOperand(values[i])
      i += 1
    }
  }

  /// The MR x NR tile of C (MR = rows: 6 or 12) from an A panel and a B
  /// panel: 12 or 24 vector accumulators. Each row's sum runs over the inner
  /// indices in order, so both tiles give the same bits.
  @inlinable @inline(__always)
  static func micro<K: KernelISA>(_: K.Type, rows MR: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                  c: UnsafeMutablePointer<Float>, ldc: Int, mr: Int, nr: Int, accumulate: Bool) {
    let W = K.V.scalarCount
    var top = TileRows<K>(), bottom = TileRows<K>()
    var pa = a, pb = b
    // The tile of C is read (or written) only after the loop: asked for now,
    // its lines arrive from L2 or L3 while the loop runs instead of stalling
    // the final loads and stores.
    moe_prefetch_tile(c, ldc, Int32(mr), 2 * W)
    // A 12-row panel whose rows that exist fit in the top half (the last panel
    // of a block) runs the six-row loop over it.
    let half = TileRows<K>.count, both = MR == 2 * half && mr > half
    // The B panel streams in from L2 (the A panel stays in L1): each step
    // asks for the B row eight steps ahead (a hint; past the panel's end it
    // is ignored).
    if both {
      for _ in 0..<kc {
        prefetchBRow(K.self, pb + 16 * W)
        let b0 = K.load(pb), b1 = K.load(pb + W)
        top.step(pa, b0, b1)
        bottom.step(pa + half, b0, b1)
        pa += MR
        pb += 2 * W
      }
    } else {
      for _ in 0..<kc {
        prefetchBRow(K.self, pb + 16 * W)
        let b0 = K.load(pb), b1 = K.load(pb + W)
        top.step(pa, b0, b1)
        pa += MR
        pb += 2 * W
      }
    }
    if mr == MR && nr == 2 * W {
      top.put(c, ldc: ldc, accumulate: accumulate)
      if both { bottom.put(c + half * ldc, ldc: ldc, accumulate: accumulate) }
      return
    }
    // An edge tile: through a buffer, then only the rows and columns that exist.
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * half * 2 * W) { tile in
      guard let t = tile.baseAddress else { return }
      let NR = 2 * W
      top.put(t, ldc: NR, accumulate: false)
      if both { bottom.put(t + half * NR, ldc: NR, accumulate: false) }
      for i in 0..<mr {
        let p = c + i * ldc, s = t + i * NR
        if accumulate {
          for j in 0..<nr { p[j] += s[j] }
        } else {
          for j in 0..<nr { p[j] = s[j] }
        }
      }
    }
  }

  /// Asks for the lines of one packed B row (2 W floats, 64-byte aligned).
  @inlinable @inline(__always)
  static func prefetchBRow<K: KernelISA>(_: K.Type, _ p: UnsafePointer<Float>) {
    var o = 0
    while o < 2 * K.V.scalarCount {
      moe_prefetch(p + o)
      o += 16
    }
  }

  /// The plain product (float accumulation in index order; with bf16 compute,
  /// of the operands rounded to bf16): the fallback when no packing memory is
  /// available, and the tests' reference.
  @inlinable
  public static func reference(_ p: GEMMProblem) {
    let bf16 = p.compute == .bf16
    for i in 0..<p.m {
      for j in 0..<p.n {
        var s: Float = 0
        for t in 0..<p.k {
          let a = p.a.value(i, t), b = p.b.value(t, j)
          s += bf16 ? bf16ComputeOperand(a) * bf16ComputeOperand(b) : a * b
        }
        let dst = p.c + i * p.ldc + j
        dst.pointee = p.accumulate ? dst.pointee + s : s
      }
    }
  }
}

/// Six rows of a microkernel tile, two vectors of C per row, held in registers:
/// the 6-row tile is one of these, the 12-row tile two sharing the B vectors.
@usableFromInline
struct TileRows<K: KernelISA> {
  @usableFromInline static var count: Int { 6 }
  @usableFromInline var c00 = K.V(), c01 = K.V(), c10 = K.V(), c11 = K.V(), c20 = K.V(), c21 = K.V()
  @usableFromInline var c30 = K.V(), c31 = K.V(), c40 = K.V(), c41 = K.V(), c50 = K.V(), c51 = K.V()

  @inlinable @inline(__always)
  init() {}

  /// One inner index: row i += a[i] * (b0, b1).
  @inlinable @inline(__always)
  mutating func step(_ a: UnsafePointer<Float>, _ b0: K.V, _ b1: K.V) {
    var x = K.V(repeating: a[0])
    c00 = K.madd(c00, x, b0); c01 = K.madd(c01, x, b1)
    x = K.V(repeating: a[1])
    c10 = K.madd(c10, x, b0); c11 = K.madd(c11, x, b1)
    x = K.V(repeating: a[2])
    c20 = K.madd(c20, x, b0); c21 = K.madd(c21, x, b1)
    x = K.V(repeating: a[3])
    c30 = K.madd(c30, x, b0); c31 = K.madd(c31, x, b1)
    x = K.V(repeating: a[4])
    c40 = K.madd(c40, x, b0); c41 = K.madd(c41, x, b1)
    x = K.V(repeating: a[5])
    c50 = K.madd(c50, x, b0); c51 = K.madd(c51, x, b1)
  }

  /// The six rows into c (rows ldc apart), added to what is there when accumulate.
  @inlinable @inline(__always)
  func put(_ c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
    let W = K.V.scalarCount
    @inline(__always) func row(_ i: Int, _ v0: K.V, _ v1: K.V) {
      let p = c + i * ldc
      if accumulate {
        K.store(K.load(p) + v0, p)
        K.store(K.load(p + W) + v1, p + W)
      } else {
        K.store(v0, p)
        K.store(v1, p + W)
      }
    }
    row(0, c00, c01); row(1, c10, c11); row(2, c20, c21)
    row(3, c30, c31); row(4, c40, c41); row(5, c50, c51)
  }
}

/// Arithmetic throughput of the calling thread: independent multiply-add chains
/// over `iterations` steps; returns (flops, a value that depends on every chain
/// so the work cannot be skipped).
public enum FMALoop {
  @inlinable @inline(__always)
  public static func run<K: KernelISA>(_: K.Type, iterations: Int) -> (flops: Double, sink: Float) {
    let one = K.V(repeating: 1.0000001), tiny = K.V(repeating: 1e-7)
    var a0 = K.V(repeating: 0.1), a1 = K.V(repeating: 0.2), a2 = K.V(repeating: 0.3), a3 = K.V(repeating: 0.4)
    var a4 = K.V(repeating: 0.5), a5 = K.V(repeating: 0.6), a6 = K.V(repeating: 0.7), a7 = K.V(repeating: 0.8)
    var a8 = K.V(repeating: 0.9), a9 = K.V(repeating: 1.0), a10 = K.V(repeating: 1.1), a11 = K.V(repeating: 1.2)
    for _ in 0..<iterations {
      a0 = K.madd(tiny, a0, one); a1 = K.madd(tiny, a1, one); a2 = K.madd(tiny, a2, one)
      a3 = K.madd(tiny, a3, one); a4 = K.madd(tiny, a4, one); a5 = K.madd(tiny, a5, one)
      a6 = K.madd(tiny, a6, one); a7 = K.madd(tiny, a7, one); a8 = K.madd(tiny, a8, one)
      a9 = K.madd(tiny, a9, one); a10 = K.madd(tiny, a10, one); a11 = K.madd(tiny, a11, one)
    }
    let s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11))
    return (Double(iterations) * 12 * 2 * Double(K.V.scalarCount), s.sum())
  }
}

/// One instruction set's entry points, as the dispatcher sees them.
public struct KernelTable: Sendable {
  /// "avx512", "avx2", "portable".
  public let name: String
  /// Vector width in floats.
  public let width: Int
  /// Whether multiply-adds are fused (FMA instructions).
  public let fused: Bool
  /// Where bf16 compute runs: AMX tiles, AVX512-BF16 (vdpbf16ps), or the
  /// fallback (operands rounded while packing, the f32 microkernel).
  public let bf16: BF16Kernels
  public let gemm: @Sendable (GEMMProblem) -> Void
  /// One product, or two of equal shape in one blocked loop, with an epilogue
  /// per finished strip of C (PackedGEMM.run(_:_:_:epilogue:)).
  public let gemmFused: @Sendable (GEMMProblem, GEMMProblem?, (Int, Int, Int, Int) -> Void) -> Void
  public let fmaLoop: @Sendable (Int) -> (flops: Double, sink: Float)

  public init(name: String, width: Int, fused: Bool, bf16: BF16Kernels, gemm: @escaping @Sendable (GEMMProblem) -> Void,
              gemmFused: @escaping @Sendable (GEMMProblem, GEMMProblem?, (Int, Int, Int, Int) -> Void) -> Void,
              fmaLoop: @escaping @Sendable (Int) -> (flops: Double, sink: Float)) {
    self.name = name
    self.width = width
    self.fused = fused
    self.bf16 = bf16
    self.gemm = gemm
    self.gemmFused = gemmFused
    self.fmaLoop = fmaLoop
  }
}
