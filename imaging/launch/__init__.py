"""Launching: distributed env (:mod:`.env`), preemption flag (:mod:`.preempt`),
sbatch rendering (:mod:`.render`), submission (:mod:`.submit`), Slurm queries
(:mod:`.slurm`) and multirun sweeps (:mod:`.sweep`). See docs/slurm.md."""
