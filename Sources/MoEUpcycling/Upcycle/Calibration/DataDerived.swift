import MoEFormats
import MoEModel
import MoESupport

/// What an upcycle run learns from running the dense model: calibration
/// statistics (collected, or loaded from a file) and router prompts' hidden
/// states, per layer, with what the output config records about them.
package enum DataDerived {
  static func collect(checkpoint: Checkpoint, options o: UpcycleOptions) throws -> ([LayerData], [(String, JSON)]) {
    let d = checkpoint.description
    var data = Array(repeating: LayerData(), count: d.numLayers)
    let needed = o.needsStatistics
    if o.calibration != nil && o.statisticsPath != nil {
      throw MoEError.invalid("give calibration data or a statistics file, not both")
    }
    if needed && o.calibration == nil && o.statisticsPath == nil {
      throw MoEError.invalid("\(usersOfStatistics(o)) needs calibration statistics: pass calibration data (text, or token ids) or a statistics file saved by an earlier calibration")
    }
    if o.saveStatisticsPath != nil && o.calibration == nil {
      throw MoEError.invalid("saving statistics needs calibration data to collect them from")
    }
    if !needed && o.saveStatisticsPath == nil && (o.calibration != nil || o.statisticsPath != nil) {
      throw MoEError.invalid("calibration statistics were given but nothing uses them; they serve partition-select activation|cluster, calibrated-scale, drop-select least-important, router-init kmeans, shared-from-frequent, or saving them")
    }
    if o.routerInit != .prompts && (o.routerPromptsPath != nil || o.routerNegativePromptsPath != nil) {
      throw MoEError.invalid("router prompts are read by router-init prompts only (router init is \(o.routerInit.caseName))")
    }
    if o.routerNegativePromptsPath != nil && o.routerPromptsPath == nil {
      throw MoEError.invalid("negative router prompts need the prompts file too")
    }

    var model: DecoderModel? = nil
    func denseModel() throws -> DecoderModel {
      if let model { return model }
      let m = try Calibrator.denseModel(checkpoint)
      model = m
      return m
    }

    var record: [(String, JSON)] = []
    var statistics: CalibrationStatistics? = nil
    if let c = o.calibration {
      statistics = try Calibrator.collect(model: try denseModel(), checkpoint: checkpoint, options: c)
      if let path = o.saveStatisticsPath, let s = statistics { try s.save(to: path, force: o.force) }
    } else if let path = o.statisticsPath {
      guard FileSystem.isRegularFile(path) else { throw MoEError.notFound("statistics file '\(path)' is not a readable file") }
      let s = try CalibrationStatistics.load(from: path)
      try s.check(matches: checkpoint, path: path)
      statistics = s
    }
    if let s = statistics {
      let group = o.method.rule.routerGroup(o)
      if o.routerInit == .kmeans && s.sampleRows < o.numExperts / group {
        throw MoEError.invalid("router init kmeans needs at least \(o.numExperts / group) sampled tokens per layer; the statistics hold \(s.sampleRows)")
      }
      for l in 0..<d.numLayers { data[l].statistics = s.layers[l] }
      if needed {
        record += [("calibration_tokens", .int(s.tokens)), ("calibration_hash", .string(s.dataHashText)),
                   ("calibration_samples", .int(s.sampleRows)), ("fire_quantile", .float(s.fireQuantile))]
      }
    }

    if o.routerInit == .prompts, let path = o.routerPromptsPath {
      let groups = o.numExperts / o.method.rule.routerGroup(o)
      let positive = try RouterInputMean.collect(model: try denseModel(), path: path, expectedLines: groups,
                                                 what: "router prompts file")
      var negative: [[[Float]]]? = nil
      if let neg = o.routerNegativePromptsPath {
        negative = try RouterInputMean.collect(model: try denseModel(), path: neg, expectedLines: groups,
                                               what: "negative router prompts file").means
      }
      for l in 0..<d.numLayers {
        data[l].promptMeans = positive.means[l]
        data[l].negativePromptMeans = negative?[l]
        data[l].promptSamples = positive.samples[l]
      }
      record.append(("router_prompts_hash", .string(cFormat("%016llx", positive.hash))))
    }
    return (data, record)
  }

  /// The options that read statistics, for messages.
  static func usersOfStatistics(_ o: UpcycleOptions) -> String {
    var users: [String] = []
    if o.method.rule.needsStatistics(o) {
      users.append(o.method != .partition ? "drop-select \(o.dropSelect.caseName)"
                   : o.partitionSelect == .activation || o.partitionSelect == .cluster
                   ? "partition-select \(o.partitionSelect.caseName)" : "calibrated-scale")
    }
    if o.routerInit.rule.needsStatistics(o) { users.append("router-init \(o.routerInit.caseName)") }
    if o.sharedFromFrequent > 0 { users.append("shared-from-frequent") }
    return users.joined(separator: " and ")
  }
}
