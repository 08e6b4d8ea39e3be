"""Evaluation of one-step generators, their teachers and any image set against real data
(``python -m training.evaluate``).

One job per module:

- ``sources``: what to evaluate, a ``--model`` argument resolved to a model dir or a run dir and its snapshots;
- ``options``: the options of an evaluation run;
- ``protocol``: the seed ranges by role (validation for choices, test for reported figures), the bootstrap
  interval of FD and mean ± sd over fine-tune seeds;
- ``samples``: the generated sets (seeded noise, balanced classes; one step or Heun at an NFE);
- ``reference``: the real images (the test split, and a train subset as the real-vs-real floor);
- ``classifier``: the evaluation classifier whose features the metrics compare (model, training, model dirs);
- ``inception``: Inception-v3 features for the usual FID, from a local weights file;
- ``features``: the feature spaces (classifier, teacher encoder, Inception), their fingerprints and the choice
  among them;
- ``imagesets``: image sets to score or compare with (folders, .npz arrays, data set splits);
- ``stats``: reference statistics files, written once and compared with many sets;
- ``score``: one image set against a reference (``score`` and ``ref``);
- ``metrics``: Fréchet distance, KID, precision/recall and class accuracy on feature vectors;
- ``spectra``: radially averaged power spectra;
- ``evaluator``: the reference features, and one sample set measured against them;
- ``groups``: fine-tune seeds of one variant as mean ± sd, with the per-seed figures;
- ``curves``: the budget curve of a fine-tune run's snapshots and its crossing of the teacher's best FD;
- ``pipeline``: one whole evaluation run (``run_evaluation``);
- ``report`` and ``plots``: its summary, ``report.md``, ``metrics.json`` and the PNG figures.
"""
