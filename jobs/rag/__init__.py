"""Fine-tuning against retrieval (jobs.compare_rag): the knowledge base and its chunks, retrieval by sentence
embeddings, and the answer metrics."""
