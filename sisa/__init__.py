"""SISA (Sharded, Isolated, Sliced, Aggregated) training of a UTKFace age classifier, and the
fairness of its predictions across races when samples are placed by their likelihood of being
unlearned.

One module per concept:
  errors       the one exception type the command lines turn into a one-line message
  seeding      every random stream derived from the run's single --seed
  config       the frozen, JSON-serialisable configuration of a run
  store        atomic writes, checksums and the run-folder lock
  layout       where every file of a run folder, of summaries/ and of a study lives (the only place paths are made)
  data         UTKFace file names -> labels, the decoded-image cache
  likelihood   the a-priori unlearning-likelihood model of the original study
  partition    test sets, shards and slices for every fold and strategy; the groups reported
  experiment   a run folder created or re-opened (or planned in memory): config, faces, partitions
  inputs, augment   normalisation and batched augmentation on the device that holds the images
  recipe       training recipes: optimiser, schedule, loss, augmentation
  model        the ResNet-18 age classifier and the small CNNs
  device, engine    the device and precision, and the training step (eager or CUDA graphs)
  checkpoints  slice checkpoints: atomic, verified, loaded without executing code; what is missing
  training     cumulative slice stages, resume
  distributed  shards over torchrun ranks
  aggregation  shard models -> ensemble scores
  fairness     accuracy by race and age class, summaries, bootstrap intervals, comparing runs
  measures     what a study measures by race: age-standardised, plain and within-one accuracy, gaps;
               the degenerate-model guard
  stats        bootstrap replicates, levels and paired contrasts with verdicts (typed records)
  intervals    changes over replicates on shared faces: standard errors, Bonferroni intervals, verdicts
  evaluation   a trained run -> logits, summaries, figures
  plots        the figures
  unlearning   serving deletion requests (one fixed request order per fold), verifying them, their cost
  commit       an unlearning request's commit, finished after a crash
  serving      what unlearn.py does, callable from Python: serve, verify, price, report
  study/       the whole study: settings, progress, runner, jobs, launchers, estimates
  analysis, report, results   a study's numbers, its report, and RESULTS.md
  cli          the flags and the one-line error exit shared by the scripts
"""

__version__ = "0.1.0"
