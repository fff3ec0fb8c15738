"""`ssmkit generate`: stream text from a trained model (ssmkit's or a transformers checkpoint)."""

from __future__ import annotations

import sys

NAME, ORDER = "generate", 20
HELP = "generate text from a trained model, streaming"
DESCRIPTION = (
    "Generate from a run directory (or its model/ directory, or a transformers checkpoint), streaming tokens."
)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="run directory (holding model/) or model directory")
    p.add_argument("--prompt", "-p", default="def ", help="text to continue (default: %(default)r)")
    p.add_argument("--max-new-tokens", "-n", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = all (default)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--int8", action="store_true", help="int8 weights (CPU; see ssmkit quantize)")


def run(args) -> int:
    import torch

    from ssmkit.cli.errors import UsageError
    from ssmkit.cli.loading import load_model_and_tokenizer
    from ssmkit.inference.memory import return_freed_memory
    from ssmkit.interop.hf.files import generation_ids
    from ssmkit.serve.textstream import TextStream

    return_freed_memory()  # an inference process: freed activations go back (ssmkit.inference.memory)
    model, tok, directory = load_model_and_tokenizer(args.checkpoint, args.int8)
    model.eval()
    torch.manual_seed(args.seed)
    ids = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise UsageError("ssmkit generate: --prompt must not be empty")
    kwargs = dict(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    eos = generation_ids(directory).get("eos_token_id", [])  # a transformers directory's end tokens
    # generate() checks its options when called, so a bad one is reported before the prompt is echoed
    tokens = model.generate(ids, max_new_tokens=args.max_new_tokens, stream=True, **kwargs)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    text = TextStream(tok)  # decodes the whole reply each time: no split characters, no lost spaces
    for tok_t in tokens:
        if int(tok_t[0]) in eos:
            break
        sys.stdout.write(text.push(int(tok_t[0]))[0])
        sys.stdout.flush()
    sys.stdout.write(text.flush() + "\n")
    return 0
