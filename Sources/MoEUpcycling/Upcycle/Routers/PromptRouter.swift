import MoESupport

/// Routers from prompts (mergekit-moe's hidden-state gates): one line of
/// prompts per expert (per virtual expert for granular); an expert's row is
/// the mean router input (normed hidden state) over its prompt's tokens,
/// minus the mean over its negative prompt's tokens when negative prompts are
/// given. Rows are centered and scaled to the router spread over the prompts'
/// tokens (or the calibration sample when there is one).
package struct PromptRouter: RouterInitializer {
  package var name: String { "prompts" }

  package func validate(_ o: UpcycleOptions) throws {
    guard o.routerPromptsPath != nil else {
      throw MoEError.invalid("router init prompts needs a prompts file (one line per expert)")
    }
    try RouterRows.validateSpread(o)
  }

  package func rows(_ b: ExpertBuilder, groups g: Int) throws -> [Float] {
    guard let means = b.data.promptMeans, means.count == g else {
      throw MoEError(.internal, "router prompts of layer \(b.layer) were not collected")
    }
    let H = b.dense.hidden
    var rows = [Float](repeating: 0, count: g * H)
    for e in 0..<g {
      for i in 0..<H {
        rows[e * H + i] = means[e][i] - (b.data.negativePromptMeans?[e][i] ?? 0)
      }
    }
    rows = RouterRows.centered(rows, count: g, width: H)
    let samples = b.data.statistics?.routerInputs ?? b.data.promptSamples ?? []
    return RouterRows.scaled(rows, count: g, width: H, samples: samples, spread: b.options.routerSpread)
  }

  package func record(_ o: UpcycleOptions) -> [(String, JSON)] {
    [("router_spread", .float(o.routerSpread)), ("router_negative_prompts", .bool(o.routerNegativePromptsPath != nil))]
  }
}
