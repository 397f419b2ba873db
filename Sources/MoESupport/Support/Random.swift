#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: seeds other generators and derives independent stream seeds.
public struct SplitMix64: Sendable {
  public var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// xoshiro256**: the generator behind every random draw. Deterministic for a
/// given seed on every platform; streams are derived from (seed, purpose, ids).
public struct Rng: Sendable {
  @usableFromInline var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

  public init(seed: UInt64) {
    var sm = SplitMix64(seed: seed)
    s0 = sm.next(); s1 = sm.next(); s2 = sm.next(); s3 = sm.next()
  }

  /// An independent stream for a purpose and a tuple of ids (layer, expert, projection...).
  public init(seed: UInt64, stream ids: [UInt64]) {
    var h = SplitMix64(seed: seed ^ 0x6D6F_6575_7063_7963) // "moeupcyc"
    var mixed = h.next()
    for id in ids {
      var m = SplitMix64(seed: mixed ^ (id &* 0x9E37_79B9_7F4A_7C15))
      mixed = m.next()
    }
    self.init(seed: mixed)
  }

  @inlinable @inline(always)
  public mutating func next() -> UInt64 {
    let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
    let t = s1 << 17
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
    s2 ^= t
    s3 = (s3 << 45) | (s3 >> 19)
    return result
  }

  /// Uniform in [0, 1) with 53 random bits.
  @inlinable @inline(always)
  public mutating func uniform() -> Double {
    Double(next() >> 11) * 0x1.0p-53
  }

  /// Uniform integer in 0..<n (unbiased, Lemire's method).
  public mutating func below(_ n: Int) -> Int {
    precondition(n > 0)
    let bound = UInt64(n)
    var m = next().multipliedFullWidth(by: bound)
    if m.low < bound {
      let threshold = (0 &- bound) % bound
      while m.low < threshold { m = next().multipliedFullWidth(by: bound) }
    }
    return Int(m.high)
  }

  /// Standard normal sample (ziggurat, 256 layers).
  @inlinable @inline(always)
  public mutating func normal() -> Double {
    let z = Ziggurat.shared
    while true {
      let u = next()
      let layer = Int(u & 0xFF)
      let sign: Double = (u & 0x100) != 0 ? -1 : 1
      let j = Double(u >> 11) * 0x1.0p-53  // [0,1)
      let x = j * z.x[layer]
      if x < z.x[layer + 1] { return sign * x }
      if layer == 0 {
        // Tail beyond r (Marsaglia's method).
        var xt = 0.0, yt = 0.0
        repeat {
          xt = -log(1 - uniform()) / Ziggurat.r
          yt = -log(1 - uniform())
        } while 2 * yt < xt * xt
        return sign * (Ziggurat.r + xt)
      }
      let y = z.f[layer + 1] + uniform() * (z.f[layer] - z.f[layer + 1])
      if y < exp(-0.5 * x * x) { return sign * x }
    }
  }

  /// Fisher-Yates: `count` distinct indices of 0..<n, in increasing order.
  public mutating func sample(_ count: Int, of n: Int) -> [Int] {
    precondition(count >= 0 && count <= n)
    var perm = Array(0..<n)
    for i in 0..<count {
      let j = i + below(n - i)
      perm.swapAt(i, j)
    }
    return Array(perm[0..<count]).sorted()
  }

  /// A random permutation of 0..<n.
  public mutating func permutation(_ n: Int) -> [Int] {
    var perm = Array(0..<n)
    if n > 1 {
      for i in stride(from: n - 1, to: 0, by: -1) { perm.swapAt(i, below(i + 1)) }
    }
    return perm
  }
}

/// Tables of the 256-layer ziggurat for the standard normal (Marsaglia & Tsang 2000).
/// x[0] is the virtual width of the base layer (v / f(r)), x[1] = r, x[256] = 0.
@usableFromInline final class Ziggurat: Sendable {
  @usableFromInline static let shared = Ziggurat()
  @usableFromInline static let r = 3.6541528853610088
  static let v = 0.00492867323399
  @usableFromInline let x: [Double]
  @usableFromInline let f: [Double]

  private init() {
    let n = 256
    var x = [Double](repeating: 0, count: n + 1)
    var f = [Double](repeating: 0, count: n + 1)
    let r = Ziggurat.r
    x[0] = Ziggurat.v / exp(-0.5 * r * r)
    x[1] = r
    for i in 2..<n {
      x[i] = (-2 * log(Ziggurat.v / x[i - 1] + exp(-0.5 * x[i - 1] * x[i - 1]))).squareRoot()
    }
    x[n] = 0
    for i in 0...n { f[i] = exp(-0.5 * x[i] * x[i]) }
    // The base layer's "f" is 0 so the tail branch handles it.
    f[0] = 0
    self.x = x
    self.f = f
  }
}

/// The 64-bit FNV-1a hash of `bytes` (stream ids from names, data identities).
public func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
  var h: UInt64 = 0xCBF2_9CE4_8422_2325
  for byte in bytes {
    h ^= UInt64(byte)
    h &*= 0x0000_0100_0000_01B3
  }
  return h
}
