import Testing
@testable import MoESupport
@testable import MoERuntime

@Suite struct BufferTests {
  /// Slices of a weight arena are 64-byte aligned, disjoint, keep their chunk
  /// alive after the arena is gone, and large requests get their own memory.
  @Test func weightArenaSlicesAreAlignedDisjointAndOwned() throws {
    var slices: [AlignedBuffer] = []
    do {
      let arena = WeightArena()
      for floats in [0, 1, 17, 1000, 600_000, 3, 2_000_000, 1_500_000] {
        slices.append(try arena.allocate(floats: floats, what: "test"))
      }
      // Larger than a quarter chunk: an owned allocation, huge-page aligned.
      let big = try arena.allocate(floats: WeightArena.chunkFloats / 4 + 1, what: "big")
      #expect(Int(bitPattern: big.pointer) % hugePageBytes == 0)
      slices.append(big)
      #expect(throws: MoEError.self) { try arena.allocate(floats: -1, what: "negative") }
    }
    for (i, s) in slices.enumerated() {
      #expect(Int(bitPattern: s.pointer) % 64 == 0)
      // Write every slice with its index, then check none overwrote another.
      s.pointer.update(repeating: Float(i), count: max(s.floats, 1))
    }
    for (i, s) in slices.enumerated() where s.floats > 0 {
      #expect(s.pointer[0] == Float(i) && s.pointer[s.floats - 1] == Float(i))
    }
    let ranges = slices.map { s in
      Int(bitPattern: s.pointer)..<(Int(bitPattern: s.pointer) + max(s.floats, 1) * 4)
    }
    for a in ranges.indices { for b in ranges.indices where a < b { #expect(!ranges[a].overlaps(ranges[b])) } }
  }

  /// Owned buffers of huge-page size start on a huge page boundary.
  /// A touching arena writes each buffer it hands out, exactly that buffer
  /// (the rest of a chunk stays untouched), chunk slices and large blocks alike.
  @Test func weightArenaTouchesEachBufferItHandsOut() throws {
    var touched: [(Int, Int)] = []
    let arena = WeightArena { p, n in touched.append((Int(bitPattern: p), n)) }
    var given: [(Int, Int)] = []
    for floats in [100, 7, WeightArena.chunkFloats / 4 + 1, 5000] {
      let b = try arena.allocate(floats: floats, what: "t")
      given.append((Int(bitPattern: b.pointer), floats))
    }
    #expect(touched.count == given.count && zip(touched, given).allSatisfy { $0 == $1 })
  }

  /// Runtime.zero clears exactly the floats asked for, on any split over the
  /// workers, and nothing after them.
  @Test func runtimeZeroClearsExactlyTheRange() throws {
    let rt = try Runtime(threads: 2, pin: false)
    for n in [0, 1, 1023, 1024, 1025, 300_001] {
      let b = try AlignedBuffer(floats: n + 1, what: "zero")
      b.pointer.update(repeating: 1, count: n + 1)
      rt.zero(b.pointer, floats: n)
      #expect((0..<n).allSatisfy { b.pointer[$0] == 0 } && b.pointer[n] == 1, "\(n)")
    }
  }

  @Test func largeBuffersStartOnHugePages() throws {
    let b = try AlignedBuffer(floats: hugeAllocationBytes / 4, what: "large")
    #expect(Int(bitPattern: b.pointer) % hugePageBytes == 0)
    let small = try AlignedBuffer(floats: 100, what: "small")
    #expect(Int(bitPattern: small.pointer) % 64 == 0)
  }
}
