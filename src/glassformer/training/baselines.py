"""The simple sentiment methods the guide lists, as baselines on the same split as the fine-tuned model.

VADER (option 3, rules):  label = positive if the lexicon's compound score >= 0.05 (VADER's documented threshold
                          for positive) else negative; the ``vaderSentiment`` package (Hutto & Gilbert 2014),
                          binary sentiment only
TF-IDF + LR (option 2):   word 1-2-gram TF-IDF features, logistic regression fitted on the training split
                          (scikit-learn)
"""

from __future__ import annotations

POSITIVE_COMPOUND = 0.05


def vader_labels(texts: list[str]) -> list[str]:
    """``positive`` / ``negative`` from VADER's compound score (>= 0.05: positive)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [
        "positive" if analyzer.polarity_scores(text)["compound"] >= POSITIVE_COMPOUND else "negative" for text in texts
    ]


def tfidf_logistic_regression_labels(train_rows: list[tuple[str, str]], texts: list[str], seed: int = 0) -> list[str]:
    """Fit TF-IDF (1-2 grams, sublinear tf) + logistic regression on ``(label, text)`` rows; predict ``texts``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(C=4.0, max_iter=2000, random_state=seed),
    )
    pipeline.fit([text for _, text in train_rows], [label for label, _ in train_rows])
    return list(pipeline.predict(texts))


def label_scores(predicted: list[str], expected: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of label lists (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": round(float(accuracy_score(expected, predicted)), 4),
        "f1": round(float(f1_score(expected, predicted, average="macro")), 4),
    }
