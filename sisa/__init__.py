"""SISA (Sharded, Isolated, Sliced, Aggregated) training of a UTKFace age classifier, and the
fairness of its predictions across races when samples are placed by their likelihood of being
unlearned.

One module per concept:
  errors       the one exception type the command lines turn into a one-line message
  seeding      every random stream derived from the run's single --seed
  config       the frozen, JSON-serialisable configuration of a run
  store        atomic writes, checksums and the run-folder lock
  layout       where every file of a run folder and of summaries/ lives (the only place paths are made)
  data         UTKFace file names -> labels, the decoded-image cache
  likelihood   the a-priori unlearning-likelihood model of the original study
  partition    test sets, shards and slices for every fold and strategy
  experiment   a run folder created or re-opened: config, faces, partitions
  augment      batched augmentation on the device that holds the images
  model        the ResNet-18 age classifier and the small CNN
  checkpoints  slice checkpoints: atomic, verified, loaded without executing code
  training     cumulative slice stages, resume
  distributed  shards over torchrun ranks
  aggregation  shard models -> ensemble scores
  fairness     accuracy by race and age class, summaries, bootstrap intervals
  evaluation   a trained run -> logits, summaries, figures, comparisons
  plots        the figures
  unlearning   serving deletion requests, verifying them, and their cost
  cli          the flags and the one-line error exit shared by the scripts
"""

__version__ = "0.1.0"
