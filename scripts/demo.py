#!/usr/bin/env python
"""Use an exported Spanish MoE-BERT folder the way a Hub user would: fill-mask predictions and a sentence
similarity matrix.

    python scripts/demo.py outputs/mini-demo-hub
"""

import argparse

from sentence_transformers import SentenceTransformer, util
from transformers import pipeline

# The bundled corpus is Bible prose and LibreOffice help, so the demo speaks both registers.
FILL_MASK_SENTENCES = (
    "En el principio creó Dios los cielos y la {mask}.",
    "Y dijo Dios: Sea la {mask}; y fué la luz.",
    "Para guardar el documento, haga clic en el menú {mask}.",
    "Seleccione las celdas que desea {mask}.",
)
SIMILARITY_SENTENCES = (
    "Haga clic en Archivo y elija Guardar.",  # 0 and 1: the same instruction
    "Para guardar el documento, seleccione Archivo - Guardar.",
    "Y Jehová habló a Moisés, diciendo:",  # 2 and 3: the same kind of verse
    "Entonces habló Dios a Moisés y le dijo:",
    "El tren llega a la estación a las ocho.",  # 4: unrelated to both
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="an exported folder (or a Hub id)")
    parser.add_argument("--top_k", type=int, default=5)
    args = parser.parse_args()

    fill = pipeline("fill-mask", model=args.model_dir, trust_remote_code=True)
    print("\nFill-mask (top predictions with scores)")
    for template in FILL_MASK_SENTENCES:
        sentence = template.format(mask=fill.tokenizer.mask_token)
        guesses = ", ".join(f"{p['token_str'].strip()!r} {p['score']:.2f}" for p in fill(sentence, top_k=args.top_k))
        print(f"  {sentence}\n    -> {guesses}")

    model = SentenceTransformer(args.model_dir, trust_remote_code=True)
    embeddings = model.encode(list(SIMILARITY_SENTENCES), convert_to_tensor=True)
    similarity = util.cos_sim(embeddings, embeddings)
    print("\nCosine similarity ([CLS] embeddings; pairs 0-1 and 2-3 are related, 4 is unrelated)")
    for i, sentence in enumerate(SIMILARITY_SENTENCES):
        print(f"  [{i}] {sentence}")
    print("       " + "".join(f"{j:>7}" for j in range(len(SIMILARITY_SENTENCES))))
    for i, row in enumerate(similarity.tolist()):
        print(f"  [{i}]  " + "".join(f"{value:7.2f}" for value in row))


if __name__ == "__main__":
    main()
