"""What the model writes, as text: the stage both engines share (detokenise, split reasoning and
boxes, stop strings), structured answers (JSON Schema -> grammar, validation), boxes and points in an answer
(boxes.py) and token budgets. No torch here.
"""
