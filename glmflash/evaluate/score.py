"""Scoring answers against labels, with scikit-learn for the metrics.

- classification (a label per image, e.g. moderation's verdict): accuracy, per-class precision /
  recall / F1, a confusion matrix, and where the answer carries a confidence a threshold sweep
  ("decide automatically at or above t, send the rest to a person": how many go to review and how
  accurate the automatic part is);
- extraction (an object of fields per image, e.g. an invoice): per-field accuracy after
  normalising values (numbers from "1,280.00", dates from common formats, names without case and
  extra spaces), lists of objects (line items) matched regardless of order, and *invented*
  values: a field the labels say the document does not have (null) that the answer filled in.

- detection (objects with boxes, e.g. `--task detect`): boxes matched one to one by IoU (at
  least DETECTION_IOU, labels equal when both are given; an optimal assignment), precision,
  recall and F1 over all boxes, the mean IoU of the matches; an image is right when every
  expected box is found and nothing else.

An image with no answer (refused, failed) counts as wrong everywhere.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Any

NO_ANSWER = "(no answer)"
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%d.%m.%Y",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%Y年%m月%d日",
    "%d %B %Y",
    "%B %d, %Y",
)


def label_fields(schema: dict | None) -> tuple[str | None, str | None]:
    """The answer's label (its first property with an enum) and confidence (a number named so)."""
    props = (schema or {}).get("properties") or {}
    label = next((name for name, spec in props.items() if isinstance(spec, dict) and "enum" in spec), None)
    confidence = "confidence" if isinstance(props.get("confidence"), dict) else None
    return label, confidence


def label_choices(schema: dict | None, field: str | None) -> list[str] | None:
    """The labels the task can answer in `field` (its enum), if it declares them."""
    spec = ((schema or {}).get("properties") or {}).get(field or "")
    choices = spec.get("enum") if isinstance(spec, dict) else None
    return [str(c) for c in choices] if isinstance(choices, list) else None


def score_classification(pairs: list[tuple[str, dict | None]], label: str, confidence: str | None) -> dict:
    """`pairs`: (expected label, parsed answer or None) per image."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    truth = [expected for expected, _ in pairs]
    predicted = [_label(answer, label) for _, answer in pairs]
    classes = sorted(set(truth) | set(predicted), key=lambda c: (c == NO_ANSWER, c))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0
    )
    per_class = {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }
    scores = {
        "kind": "classification",
        "label_field": label,
        "n": len(pairs),
        "answered": sum(answer is not None for _, answer in pairs),
        "accuracy": float(accuracy_score(truth, predicted)),
        "per_class": per_class,
        "classes": classes,
        "confusion": confusion_matrix(truth, predicted, labels=classes).tolist(),  # rows: expected
    }
    confidences = [_confidence(answer, confidence) for _, answer in pairs]
    if confidence and any(c is not None for c in confidences):
        scores["confidence_field"] = confidence
        scores["thresholds"] = _sweep(truth, predicted, confidences)
    items = [
        {
            "correct": t == p,
            "expected": t,
            "predicted": p,
            "confidence": c,
            "wrong_fields": [] if t == p else [label],
        }
        for t, p, c in zip(truth, predicted, confidences, strict=True)
    ]
    return {"scores": scores, "items": items}


def _label(answer: dict | None, field: str) -> str:
    if not isinstance(answer, dict) or answer.get(field) is None:
        return NO_ANSWER
    return str(answer[field])


def _confidence(answer: dict | None, field: str | None) -> float | None:
    value = answer.get(field) if (field and isinstance(answer, dict)) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _sweep(truth: list[str], predicted: list[str], confidences: list[float | None]) -> list[dict]:
    rows = []
    for threshold in THRESHOLDS:
        auto = [i for i, c in enumerate(confidences) if c is not None and c >= threshold]
        right = sum(truth[i] == predicted[i] for i in auto)
        rows.append({
            "threshold": threshold,
            "automatic": len(auto),
            "to_review": len(truth) - len(auto),
            "automatic_accuracy": right / len(auto) if auto else None,
        })  # fmt: skip
    return rows


# -- extraction ---------------------------------------------------------------------------------


def score_extraction(pairs: list[tuple[dict, dict | None]]) -> dict:
    """`pairs`: (expected fields, parsed answer or None) per image."""
    fields: list[str] = []
    for expected, _ in pairs:
        fields += [name for name in expected if name not in fields]
    right = dict.fromkeys(fields, 0)
    invented = dict.fromkeys(fields, 0)
    items = []
    for expected, answer in pairs:
        got = answer if isinstance(answer, dict) else {}
        wrong = []
        for name in fields:
            if name not in expected:
                continue
            want, have = expected[name], got.get(name)
            if answer is not None and _empty(want) and not _empty(have):
                invented[name] += 1
            if answer is not None and same(want, have):
                right[name] += 1
            else:
                wrong.append(name)
        items.append({"correct": not wrong, "expected": expected, "predicted": answer, "wrong_fields": wrong})
    counts = {name: sum(name in expected for expected, _ in pairs) for name in fields}
    per_field = {name: right[name] / counts[name] if counts[name] else None for name in fields}
    known = [v for v in per_field.values() if v is not None]
    scores = {
        "kind": "extraction",
        "n": len(pairs),
        "answered": sum(answer is not None for _, answer in pairs),
        "accuracy": sum(bool(item["correct"]) for item in items) / len(items) if items else 0.0,
        "field_accuracy": sum(known) / len(known) if known else 0.0,
        "per_field": per_field,
        "invented": invented,
        "invented_total": sum(invented.values()),
    }
    return {"scores": scores, "items": items}


def same(want: Any, have: Any) -> bool:
    """Equal after normalising: numbers, dates, text; lists of objects in any order."""
    if _empty(want) or _empty(have):
        return _empty(want) and _empty(have)
    if isinstance(want, list) or isinstance(have, list):
        return isinstance(want, list) and isinstance(have, list) and _same_lists(want, have)
    if isinstance(want, dict) or isinstance(have, dict):
        return (
            isinstance(want, dict)
            and isinstance(have, dict)
            and all(same(want.get(k), have.get(k)) for k in set(want) | set(have))
        )
    a, b = _number(want), _number(have)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.005)
    d1, d2 = _date(want), _date(have)
    if d1 is not None and d2 is not None:
        return d1 == d2
    return _text(want) == _text(have)


def _same_lists(want: list, have: list) -> bool:
    """The same elements regardless of order (an optimal matching, scipy's assignment solver)."""
    if len(want) != len(have):
        return False
    if not want:
        return True
    from scipy.optimize import linear_sum_assignment

    cost = [[0 if same(w, h) else 1 for h in have] for w in want]
    rows, cols = linear_sum_assignment(cost)
    return all(cost[r][c] == 0 for r, c in zip(rows, cols, strict=True))


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    text = re.sub(r"[\s,']|^[^\d+-.]+|[^\d.]+$", "", str(value))  # "¥1,280.00 CNY" -> "1280.00"
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", text):
        return None
    return float(text)


def _date(value: Any) -> date | None:
    text = str(value).strip()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _text(value: Any) -> str:
    return " ".join(str(value).casefold().split())


# -- detection ----------------------------------------------------------------------------------

DETECTION_IOU = 0.5


def is_detection(expected: Any) -> bool:
    """Labels of the detect task's shape: {"objects": [{"label", "bbox_2d": [x1, y1, x2, y2]}]}."""
    objects = expected.get("objects") if isinstance(expected, dict) else None
    return isinstance(objects, list) and all(isinstance(o, dict) and "bbox_2d" in o for o in objects)


def score_detection(pairs: list[tuple[dict, dict | None]], threshold: float = DETECTION_IOU) -> dict:
    tp = fp = fn = 0
    ious: list[float] = []
    items = []
    for expected, answer in pairs:
        want = _objects(expected)
        have = _objects(answer) if isinstance(answer, dict) else []
        matches = _match(want, have, threshold)
        ious += [iou for _, _, iou in matches]
        found = {i for i, _, _ in matches}
        used = {j for _, j, _ in matches}
        missed = [want[i][0] or f"box {i + 1}" for i in range(len(want)) if i not in found]
        extra = [have[j][0] or f"box {j + 1}" for j in range(len(have)) if j not in used]
        tp, fp, fn = tp + len(matches), fp + len(extra), fn + len(missed)
        wrong = [f"missed: {m}" for m in missed] + [f"extra: {e}" for e in extra]
        if answer is None:
            wrong = ["no answer"]
        items.append({"correct": answer is not None and not wrong, "expected": expected, "predicted": answer,
                      "wrong_fields": wrong})  # fmt: skip
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    scores = {
        "kind": "detection",
        "n": len(pairs),
        "answered": sum(answer is not None for _, answer in pairs),
        "accuracy": sum(bool(item["correct"]) for item in items) / len(items) if items else 0.0,
        "iou_threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "mean_iou": sum(ious) / len(ious) if ious else None,
    }
    return {"scores": scores, "items": items}


def _objects(value: Any) -> list[tuple[str, tuple[float, ...]]]:
    out: list[tuple[str, tuple[float, ...]]] = []
    for o in (value or {}).get("objects") or []:
        box = o.get("bbox_2d") if isinstance(o, dict) else None
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
            x1, y1, x2, y2 = box
            out.append((_text(o.get("label") or ""), (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))))
    return out


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(want: list, have: list, threshold: float) -> list[tuple[int, int, float]]:
    """The one-to-one matching with the most total IoU (scipy), keeping pairs at the threshold
    whose labels agree (a missing label agrees with any)."""
    if not want or not have:
        return []
    from scipy.optimize import linear_sum_assignment

    def score(w, h) -> float:
        same_label = not w[0] or not h[0] or w[0] == h[0]
        value = iou(w[1], h[1])
        return value if same_label and value >= threshold else 0.0

    matrix = [[score(w, h) for h in have] for w in want]
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return [(r, c, matrix[r][c]) for r, c in zip(rows, cols, strict=True) if matrix[r][c] > 0]
