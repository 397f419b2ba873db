import MoESupport

/// Routers from the dense model's router inputs over calibration data. In
/// general each row is a centroid of balanced spherical k-means (clusters of
/// equal size) on the sampled router inputs (normed hidden states), so a
/// token goes to the experts whose centroids it is nearest. For `cluster` experts, whose neurons were grouped
/// by when they fire, expert e's row is the covariance of the (unit) router
/// input with the share of the token's activation mass that lies in e's
/// neurons: tokens go where their neurons fire. Rows are centered and scaled
/// to the router spread.
package struct KMeansRouter: RouterInitializer {
  package var name: String { "kmeans" }

  package func needsStatistics(_ o: UpcycleOptions) -> Bool { true }

  package func validate(_ o: UpcycleOptions) throws { try RouterRows.validateSpread(o) }

  package func rows(_ b: ExpertBuilder, groups g: Int) throws -> [Float] {
    guard let stats = b.data.statistics else {
      throw MoEError.invalid("router init kmeans needs calibration statistics (calibration data or a statistics file)")
    }
    let H = b.dense.hidden, S = stats.sampleRows
    guard S >= g else {
      throw MoEError.invalid("router init kmeans needs at least \(g) sampled tokens per layer (the statistics hold \(S))")
    }
    let x = KMeans.normalizedRows(stats.routerInputs, rows: S, dim: H)
    var rows: [Float]
    if let neurons = b.neurons, b.options.method == .partition, b.options.partitionSelect == .cluster, neurons.count == g {
      rows = Self.fromNeurons(neurons, stats: stats, unitInputs: x, hidden: H)
    } else {
      var rng = Rng(seed: b.options.seed, stream: [ExpertBuilder.purposeRouter, UInt64(b.layer), 1])
      // Clusters of equal size (the sample's remainder left out), so that
      // every expert starts with the same share of the sampled tokens.
      let n = S - S % g
      rows = KMeans.balancedClusters(Array(x[0..<(n * H)]), rows: n, dim: H, k: g, rng: &rng).centroids
    }
    rows = RouterRows.centered(rows, count: g, width: H)
    return RouterRows.scaled(rows, count: g, width: H, samples: stats.routerInputs, spread: b.options.routerSpread)
  }

  /// Row e = mean over sampled tokens of (x_t - mean x) (m_te - mean_t m_te),
  /// m_te = sum over e's neurons of |a_ti| / sum over all of them.
  static func fromNeurons(_ neurons: [[Int]], stats: LayerStatistics, unitInputs x: [Float], hidden H: Int) -> [Float] {
    let I = stats.absMean.count, S = stats.sampleRows, g = neurons.count
    var mass = [Double](repeating: 0, count: S * g)
    for t in 0..<S {
      var total = 0.0
      for e in 0..<g {
        var s = 0.0
        for i in neurons[e] { s += Double(abs(stats.sketch[t * I + i])) }
        mass[t * g + e] = s
        total += s
      }
      if total > 0 { for e in 0..<g { mass[t * g + e] /= total } }
    }
    var meanX = [Double](repeating: 0, count: H)
    for t in 0..<S { for i in 0..<H { meanX[i] += Double(x[t * H + i]) / Double(S) } }
    var rows = [Float](repeating: 0, count: g * H)
    for e in 0..<g {
      var meanMass = 0.0
      for t in 0..<S { meanMass += mass[t * g + e] / Double(S) }
      var row = [Double](repeating: 0, count: H)
      for t in 0..<S {
        let w = mass[t * g + e] - meanMass
        for i in 0..<H { row[i] += (Double(x[t * H + i]) - meanX[i]) * w }
      }
      for i in 0..<H { rows[e * H + i] = Float(row[i] / Double(S)) }
    }
    return rows
  }

  package func record(_ o: UpcycleOptions) -> [(String, JSON)] { [("router_spread", .float(o.routerSpread))] }
}
