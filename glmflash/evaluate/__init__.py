"""Evaluation on a team's own labelled images: a task run as a resumable batch job, its answers
scored against the labels (run.py; rows.py reads them under limits, data.py checks them and where their
images are, score.py scores them with scikit-learn), runs compared side by side with cost per
correct answer (compare.py), and a self-contained HTML report (report.py). `python -m glmflash
eval` is the command (commands/evaluate.py).
"""
