@testable import MoESupport
#if canImport(Glibc)
import Glibc
#endif
import Testing

@Suite struct RandomTests {
  // MARK: Reference values

  /// SplitMix64 reference output (seed 0), as published with the algorithm.
  @Test func splitMixMatchesReference() {
    var sm = SplitMix64(seed: 0)
    #expect(sm.next() == 0xE220_A839_7B1D_CDAF)
    #expect(sm.next() == 0x6E78_9E6A_A1B9_65F4)
  }

  /// Rng(seed:) = xoshiro256** seeded by four SplitMix64 outputs. Expected values
  /// come from an independent implementation (Python) that reproduces the
  /// published xoshiro256** vector for state {1,2,3,4} (11520, 0, 1509978240, ...).
  @Test func xoshiroMatchesReference() {
    var a = Rng(seed: 0)
    #expect([a.next(), a.next(), a.next(), a.next()] ==
            [0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0, 0x6AA5_94F1_262D_2D2C])
    var b = Rng(seed: 42)
    #expect([b.next(), b.next(), b.next(), b.next()] ==
            [0x1578_0B2E_0C2E_C716, 0x6104_D986_6D11_3A7E, 0xAE17_5332_39E4_99A1, 0xECB8_AD47_03B3_60A1])
    var c = Rng(seed: 7, stream: [1, 2, 3])
    #expect([c.next(), c.next(), c.next(), c.next()] ==
            [0x7C40_D5BC_BA8D_984B, 0x78B5_B37B_04FF_EAAA, 0x87F2_D41D_1255_D877, 0xBE3C_3C26_DF78_BB34])
  }

  // MARK: Determinism and stream independence

  private static func draws(_ rng: inout Rng, _ n: Int) -> [UInt64] { (0..<n).map { _ in rng.next() } }

  @Test func sameSeedAndStreamGiveSameSequence() {
    var a = Rng(seed: 1234, stream: [1, 5, 2, 0])
    var b = Rng(seed: 1234, stream: [1, 5, 2, 0])
    #expect(Self.draws(&a, 1000) == Self.draws(&b, 1000))
    var c = Rng(seed: 99)
    var d = Rng(seed: 99)
    #expect(Self.draws(&c, 1000) == Self.draws(&d, 1000))
    // Derived draws are deterministic too.
    var e = Rng(seed: 5, stream: [3])
    var f = Rng(seed: 5, stream: [3])
    #expect((0..<1000).map { _ in e.normal() } == (0..<1000).map { _ in f.normal() })
    #expect(e.sample(10, of: 100) == f.sample(10, of: 100))
    #expect(e.permutation(50) == f.permutation(50))
  }

  @Test func differentSeedsOrIdsGiveDifferentSequences() {
    let streams: [(UInt64, [UInt64])] = [
      (1234, [1, 5, 2, 0]), (1234, [1, 5, 2, 1]), (1234, [1, 5, 0, 2]), (1234, [1, 5, 2]),
      (1234, [1, 5, 2, 0, 0]), (1235, [1, 5, 2, 0]), (1234, []), (1234, [0]), (0, []), (0, [0]),
    ]
    var seqs: [[UInt64]] = []
    for (seed, ids) in streams {
      var r = Rng(seed: seed, stream: ids)
      seqs.append(Self.draws(&r, 16))
    }
    var plain = Rng(seed: 1234)
    seqs.append(Self.draws(&plain, 16))
    for i in 0..<seqs.count {
      for j in (i + 1)..<seqs.count {
        #expect(seqs[i] != seqs[j], "streams \(i) and \(j) collide")
        // Not merely shifted: no first value is shared.
        #expect(seqs[i][0] != seqs[j][0], "streams \(i) and \(j) start with the same value")
      }
    }
  }

  // MARK: uniform / below

  @Test func uniformIsInUnitInterval() {
    var r = Rng(seed: 3)
    let n = 500_000
    var sum = 0.0, sumSq = 0.0
    var lo = 1.0, hi = 0.0
    var buckets = [Int](repeating: 0, count: 10)
    for _ in 0..<n {
      let u = r.uniform()
      #expect(u >= 0 && u < 1)
      lo = min(lo, u); hi = max(hi, u)
      sum += u; sumSq += u * u
      buckets[min(9, Int(u * 10))] += 1
    }
    let mean = sum / Double(n)
    let variance = sumSq / Double(n) - mean * mean
    #expect(abs(mean - 0.5) < 0.003)
    #expect(abs(variance - 1.0 / 12.0) < 0.002)
    #expect(lo < 1e-4 && hi > 1 - 1e-4)
    let expected = Double(n) / 10
    let chi2 = buckets.reduce(0.0) { $0 + (Double($1) - expected) * (Double($1) - expected) / expected }
    #expect(chi2 < 40, "chi-square \(chi2) with 9 degrees of freedom")
  }

  @Test func belowIsInRangeAndUniform() {
    var r = Rng(seed: 11)
    for n in [7, 10, 3] {
      let draws = 70_000 * n / 7
      var counts = [Int](repeating: 0, count: n)
      for _ in 0..<draws {
        let v = r.below(n)
        #expect(v >= 0 && v < n)
        if v >= 0 && v < n { counts[v] += 1 }
      }
      let expected = Double(draws) / Double(n)
      let chi2 = counts.reduce(0.0) { $0 + (Double($1) - expected) * (Double($1) - expected) / expected }
      // p < 1e-6 for <= 9 degrees of freedom.
      #expect(chi2 < 45, "below(\(n)): chi-square \(chi2), counts \(counts)")
    }
    for _ in 0..<100 { #expect(r.below(1) == 0) }
    // Bounds near the top of the range (rejection path taken often for 2^62 + 1).
    for n in [Int.max, (1 << 62) + 1, 1 << 40] {
      for _ in 0..<1000 {
        let v = r.below(n)
        #expect(v >= 0 && v < n)
      }
    }
    // n = 3 * 2^61: a biased reduction (e.g. plain modulo) would skew this;
    // the top third [2^62, 3 * 2^61) must get ~1/3 of the draws.
    let n = 3 << 61
    var top = 0
    for _ in 0..<30_000 where r.below(n) >= (1 << 62) { top += 1 }
    #expect(abs(Double(top) / 30_000 - 1.0 / 3.0) < 0.02)
  }

  // MARK: normal

  /// Standard normal CDF.
  static func phi(_ x: Double) -> Double { 0.5 * erfc(-x / 2.0.squareRoot()) }

  @Test func normalStatistics() {
    var r = Rng(seed: 2024, stream: [7])
    let n = 2_000_000
    let tailR = 3.6541528853610088
    // Histogram: 32 bins of width 0.25 on [-4, 4) plus two tail bins.
    let width = 0.25, lo = -4.0, inner = 32
    var bins = [Int](repeating: 0, count: inner + 2)
    var sum = 0.0, sumSq = 0.0, sumCube = 0.0, sumQuad = 0.0
    var beyondR = 0, withinOne = 0, positive = 0
    for _ in 0..<n {
      let x = r.normal()
      sum += x; sumSq += x * x; sumCube += x * x * x; sumQuad += x * x * x * x
      if abs(x) > tailR { beyondR += 1 }
      if abs(x) < 1 { withinOne += 1 }
      if x > 0 { positive += 1 }
      if x < lo { bins[0] += 1 }
      else if x >= -lo { bins[inner + 1] += 1 }
      else { bins[1 + min(inner - 1, Int((x - lo) / width))] += 1 }
    }
    let N = Double(n)
    let mean = sum / N
    let std = (sumSq / N - mean * mean).squareRoot()
    #expect(abs(mean) < 0.005, "mean \(mean)")
    #expect(abs(std - 1) < 0.005, "std \(std)")
    #expect(abs(sumCube / N) < 0.02, "third moment \(sumCube / N)")
    #expect(abs(sumQuad / N - 3) < 0.05, "fourth moment \(sumQuad / N)")
    #expect(abs(Double(positive) / N - 0.5) < 0.002)

    // The ziggurat's tail branch: P(|x| > r) = 2 (1 - Phi(r)) = erfc(r / sqrt 2).
    let exactTail = erfc(tailR / 2.0.squareRoot())
    #expect(abs(exactTail - 2.58e-4) < 0.01e-4)
    let tailFraction = Double(beyondR) / N
    #expect(abs(tailFraction / exactTail - 1) < 0.2, "tail fraction \(tailFraction), exact \(exactTail)")

    let oneFraction = Double(withinOne) / N
    #expect(abs(oneFraction - 0.6827) < 0.003, "P(|x|<1) = \(oneFraction)")

    // Chi-square against the exact bin probabilities (33 degrees of freedom;
    // 90 is far beyond the 1e-6 quantile, so only a wrong shape fails).
    let chi2 = Self.chiSquare(bins: bins, lo: lo, width: width, samples: N)
    #expect(chi2 < 90, "chi-square \(chi2), bins \(bins)")
  }

  /// Chi-square of a histogram against the standard normal: bin 0 is x < lo, the last bin
  /// x >= -lo, and the inner bins are `width` wide from `lo`.
  static func chiSquare(bins: [Int], lo: Double, width: Double, samples: Double) -> Double {
    let inner = bins.count - 2
    var chi2 = 0.0
    for b in 0..<bins.count {
      let p: Double
      if b == 0 { p = phi(lo) }
      else if b == inner + 1 { p = 1 - phi(-lo) }
      else { p = phi(lo + Double(b) * width) - phi(lo + Double(b - 1) * width) }
      let e = p * samples
      chi2 += (Double(bins[b]) - e) * (Double(bins[b]) - e) / e
    }
    return chi2
  }


  /// A finer look at the ziggurat with more samples: a 0.05-wide histogram (catches errors in the
  /// layer tables and the wedge test) and a Kolmogorov-Smirnov test of the samples beyond r
  /// (the tail algorithm) against the normal tail conditional on |x| > r.
  @Test func normalFineHistogramAndTailShape() {
    var r = Rng(seed: 99)
    let n = 12_000_000
    let tailR = 3.6541528853610088
    let width = 0.05, lo = -4.0, inner = 160
    var bins = [Int](repeating: 0, count: inner + 2)
    var tail: [Double] = []
    tail.reserveCapacity(4000)
    for _ in 0..<n {
      let x = r.normal()
      if abs(x) > tailR { tail.append(abs(x)) }
      if x < lo { bins[0] += 1 }
      else if x >= -lo { bins[inner + 1] += 1 }
      else { bins[1 + min(inner - 1, Int((x - lo) / width))] += 1 }
    }
    let N = Double(n)
    let chi2 = Self.chiSquare(bins: bins, lo: lo, width: width, samples: N)
    // 161 degrees of freedom: mean 161, sd 18; 260 is beyond the 1e-6 quantile.
    #expect(chi2 < 260, "fine chi-square \(chi2)")

    // Tail: P(|x| > t | |x| > r) = erfc(t / sqrt 2) / erfc(r / sqrt 2).
    let exactTail = erfc(tailR / 2.0.squareRoot())
    #expect(abs(Double(tail.count) / N / exactTail - 1) < 0.1, "tail count \(tail.count)")
    tail.sort()
    var d = 0.0
    for (i, t) in tail.enumerated() {
      let cdf = 1 - erfc(t / 2.0.squareRoot()) / exactTail
      d = max(d, abs(cdf - Double(i) / Double(tail.count)), abs(cdf - Double(i + 1) / Double(tail.count)))
    }
    let ks = d * Double(tail.count).squareRoot()
    // Kolmogorov distribution: P(K > 1.95) ~ 0.001.
    #expect(ks < 1.95, "tail KS statistic \(ks) over \(tail.count) samples")
    // Mean excess over r: E[x - r | x > r] = phi(r) / Q(r) - r (~0.2429, sd ~0.231);
    // within 4 standard errors. A tail with the wrong acceptance test (e.g. y < x^2
    // instead of 2y < x^2) gives ~0.223, about 5 standard errors off.
    let density = exp(-0.5 * tailR * tailR) / (2 * Double.pi).squareRoot()
    let exactExcess = density / (exactTail / 2) - tailR
    let excess = tail.reduce(0) { $0 + ($1 - tailR) } / Double(tail.count)
    #expect(abs(exactExcess - 0.2429) < 0.001)
    #expect(abs(excess - exactExcess) < 4 * 0.2312 / Double(tail.count).squareRoot(),
            "tail mean excess \(excess), exact \(exactExcess)")
  }

  // MARK: sample / permutation

  @Test(arguments: [(0, 10), (1, 1), (3, 10), (10, 10), (50, 1000), (999, 1000)])
  func sampleReturnsDistinctSortedIndices(_ k: Int, _ n: Int) {
    var r = Rng(seed: UInt64(k * 1000 + n))
    for _ in 0..<20 {
      let s = r.sample(k, of: n)
      #expect(s.count == k)
      #expect(s == s.sorted())
      #expect(Set(s).count == k)
      #expect(s.allSatisfy { $0 >= 0 && $0 < n })
    }
  }

  @Test func sampleIsUniformOverElements() {
    // Each element of 0..<10 is chosen with probability k/n = 3/10.
    var r = Rng(seed: 77)
    var counts = [Int](repeating: 0, count: 10)
    let trials = 40_000
    for _ in 0..<trials { for i in r.sample(3, of: 10) { counts[i] += 1 } }
    for c in counts { #expect(abs(Double(c) / Double(trials) - 0.3) < 0.015, "\(counts)") }
  }

  @Test func permutationIsAPermutation() {
    var r = Rng(seed: 8)
    #expect(r.permutation(0) == [])
    #expect(r.permutation(1) == [0])
    for n in [2, 5, 64, 1000] {
      let p = r.permutation(n)
      #expect(p.count == n)
      #expect(p.sorted() == Array(0..<n))
    }
    // Not the identity, and uniformly spread: position 0 holds each value ~1/4 of the time.
    #expect(r.permutation(1000) != Array(0..<1000))
    var first = [Int](repeating: 0, count: 4)
    for _ in 0..<40_000 { first[r.permutation(4)[0]] += 1 }
    for c in first { #expect(abs(Double(c) / 40_000 - 0.25) < 0.015, "\(first)") }
  }
}
