// Spherical k-means (cosine similarity, unit-norm centroids), plain and
// balanced. Deterministic for a random stream: k-means++ seeding, a fixed
// iteration limit, ties broken by index.

import MoESupport

package enum KMeans {
  /// Points [n, dim] scaled to unit norm (zero rows stay zero).
  package static func normalizedRows(_ points: [Float], rows n: Int, dim: Int) -> [Float] {
    var out = points
    for r in 0..<n {
      var s = 0.0
      for i in 0..<dim { let v = Double(out[r * dim + i]); s += v * v }
      guard s > 0 else { continue }
      let inv = Float(1 / s.squareRoot())
      for i in 0..<dim { out[r * dim + i] *= inv }
    }
    return out
  }

  /// Similarities [n, k] of unit rows to unit centroids.
  private static func similarities(_ x: [Float], rows n: Int, dim: Int, _ c: [Float], k: Int) -> [Double] {
    var out = [Double](repeating: 0, count: n * k)
    x.withUnsafeBufferPointer { xp in
      c.withUnsafeBufferPointer { cp in
        for r in 0..<n {
          for j in 0..<k {
            var s: Float = 0
            for i in 0..<dim { s += xp[r * dim + i] * cp[j * dim + i] }
            out[r * k + j] = Double(s)
          }
        }
      }
    }
    return out
  }

  /// k-means++ seeding on unit rows: k distinct starting centroids.
  private static func seed(_ x: [Float], rows n: Int, dim: Int, k: Int, rng: inout Rng) -> [Float] {
    var centroids = [Float](repeating: 0, count: k * dim)
    var nearest = [Double](repeating: .infinity, count: n)
    var pick = rng.below(n)
    for j in 0..<k {
      for i in 0..<dim { centroids[j * dim + i] = x[pick * dim + i] }
      for r in 0..<n {
        var s: Float = 0
        for i in 0..<dim { s += x[r * dim + i] * x[pick * dim + i] }
        nearest[r] = min(nearest[r], max(0, 2 - 2 * Double(s)))
      }
      guard j + 1 < k else { break }
      let total = nearest.reduce(0, +)
      if total <= 0 { pick = (pick + 1) % n; continue }
      var u = rng.uniform() * total
      pick = n - 1
      for r in 0..<n {
        u -= nearest[r]
        if u < 0 { pick = r; break }
      }
    }
    return centroids
  }

  /// Unit-norm means of each cluster's rows (a cluster without rows keeps its centroid).
  private static func update(_ x: [Float], rows n: Int, dim: Int, assignment: [Int], into c: inout [Float], k: Int) {
    var sums = [Double](repeating: 0, count: k * dim)
    var counts = [Int](repeating: 0, count: k)
    for r in 0..<n {
      let j = assignment[r]
      counts[j] += 1
      for i in 0..<dim { sums[j * dim + i] += Double(x[r * dim + i]) }
    }
    for j in 0..<k where counts[j] > 0 {
      var s = 0.0
      for i in 0..<dim { s += sums[j * dim + i] * sums[j * dim + i] }
      guard s > 0 else { continue }
      let inv = 1 / s.squareRoot()
      for i in 0..<dim { c[j * dim + i] = Float(sums[j * dim + i] * inv) }
    }
  }

  /// Spherical k-means of unit rows `x` [n, dim] into k clusters: centroids [k, dim].
  package static func cluster(_ x: [Float], rows n: Int, dim: Int, k: Int, rng: inout Rng, iterations: Int = 30) -> [Float] {
    precondition(n >= 1 && k >= 1)
    var c = seed(x, rows: n, dim: dim, k: k, rng: &rng)
    var assignment = [Int](repeating: -1, count: n)
    for _ in 0..<iterations {
      let sim = similarities(x, rows: n, dim: dim, c, k: k)
      var changed = false
      for r in 0..<n {
        var best = 0
        for j in 1..<k where sim[r * k + j] > sim[r * k + best] { best = j }
        if assignment[r] != best { assignment[r] = best; changed = true }
      }
      if !changed { break }
      update(x, rows: n, dim: dim, assignment: assignment, into: &c, k: k)
    }
    return c
  }

  /// Balanced spherical k-means: unit rows `x` [n, dim] into k clusters of
  /// exactly n / k rows each (k divides n). Each round assigns (row, cluster)
  /// pairs greedily by similarity under the size limit. Returns each
  /// cluster's rows, sorted.
  package static func balanced(_ x: [Float], rows n: Int, dim: Int, k: Int, rng: inout Rng, iterations: Int = 30) -> [[Int]] {
    balancedClusters(x, rows: n, dim: dim, k: k, rng: &rng, iterations: iterations).groups
  }

  /// `balanced`, with the clusters' unit-norm centroids [k, dim].
  static func balancedClusters(_ x: [Float], rows n: Int, dim: Int, k: Int, rng: inout Rng,
                               iterations: Int = 30) -> (groups: [[Int]], centroids: [Float]) {
    precondition(n >= k && k >= 1 && n % k == 0)
    let size = n / k
    var c = seed(x, rows: n, dim: dim, k: k, rng: &rng)
    var assignment = [Int](repeating: -1, count: n)
    for _ in 0..<iterations {
      let sim = similarities(x, rows: n, dim: dim, c, k: k)
      let order = (0..<(n * k)).sorted { sim[$0] != sim[$1] ? sim[$0] > sim[$1] : $0 < $1 }
      var next = [Int](repeating: -1, count: n)
      var filled = [Int](repeating: 0, count: k)
      var placed = 0
      for p in order where placed < n {
        let r = p / k, j = p % k
        guard next[r] < 0, filled[j] < size else { continue }
        next[r] = j
        filled[j] += 1
        placed += 1
      }
      let changed = next != assignment
      assignment = next
      if !changed { break }
      update(x, rows: n, dim: dim, assignment: assignment, into: &c, k: k)
    }
    var groups = [[Int]](repeating: [], count: k)
    for r in 0..<n { groups[assignment[r]].append(r) }
    update(x, rows: n, dim: dim, assignment: assignment, into: &c, k: k)
    return (groups, c)
  }
}
