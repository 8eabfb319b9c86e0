from kdl.models.text.text import bag_of_embeddings, bert_classifier

__all__ = ["bag_of_embeddings", "bert_classifier"]
