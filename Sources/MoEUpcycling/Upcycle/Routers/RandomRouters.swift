import MoESupport

/// Rows drawn from Normal(0, router_std).
package struct NormalRouter: RouterInitializer {
  package var name: String { "normal" }
  package func rows(_ b: ExpertBuilder, groups: Int) throws -> [Float] {
    var rng = b.routerStream()
    let std = b.options.routerStd
    return (0..<(groups * b.dense.hidden)).map { _ in Float(rng.normal() * std) }
  }
}

/// Rows drawn uniformly with standard deviation router_std (Drop-Upcycling's init).
package struct UniformRouter: RouterInitializer {
  package var name: String { "uniform" }
  package func rows(_ b: ExpertBuilder, groups: Int) throws -> [Float] {
    var rng = b.routerStream()
    let width = b.options.routerStd * 12.0.squareRoot()
    return (0..<(groups * b.dense.hidden)).map { _ in Float((rng.uniform() - 0.5) * width) }
  }
}

/// All-zero rows: every expert gets the same weight until training moves them.
package struct ZerosRouter: RouterInitializer {
  package var name: String { "zeros" }
  package func rows(_ b: ExpertBuilder, groups: Int) throws -> [Float] {
    [Float](repeating: 0, count: groups * b.dense.hidden)
  }
}
