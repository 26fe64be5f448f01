"""genmodels: generative-AI architectures from small, named components.

Public API (stable):
    load(path) -> model            genmodels directory, local Hugging Face directory, or a .gguf file
    apply_chat_template(model, messages, add_generation_prompt=True) -> str
                                   the prompt text of a conversation (the model's chat template)
    chat(model, messages, **sampling) -> str   the reply to a conversation (genmodels.chat; Conversation
    chat_stream(model, messages, **sampling)   keeps the KV cache between turns); chat_stream: text pieces
    save(model, path)              genmodels directory (config.json + model.safetensors [+ tokenizer.json])
    export_hf(model, path)         Hugging Face directory
    export_diffusers(model, path)  diffusers UNet2DModel directory (load reads one back)
    from_torchscale(decoder)       a live torchscale 0.3.0 RetNetDecoder -> RetNetLM
    from_torch_dcgan(netG_sd, netD_sd=None)  pytorch/examples DCGAN state dicts -> DCGAN
    generate(model, input_ids, max_new_tokens=..., temperature=0.0, top_k=None, top_p=None, seed=None, ...)
                                   (stop=[...] strings; cache= / return_cache=True continue and return a cache)
    DecodeSession(model)           the decode loop under generate and chat: requests with their own sampling
                                   join and leave between steps over one cache (genmodels.generation.session)
    model(input_ids, attention_mask=None) -> logits (B, T, V)
    embed(model, texts) -> (N, D)  sentence embeddings (encoders; sentence-transformers recipe)
    eval_tasks(model, records, batch=16) -> report   exact match on the task set (genmodels.data.tasks)
    sample(model, n=64, labels=None, steps=25, scheduler="ddim", guidance=1.0, seed=None) -> (N, C, H, W)
                                   images in [-1, 1] (diffusion; GANs through their own sample method)
    image_to_words(model, images) -> words per image per pyramid layer    an SPAE model (genmodels.spae;
    words_to_image(model, words, depth=None) -> (N, C, H, W)               docs/spae.md)
    build_model(config), preset(name, **overrides)   through the family registry (genmodels.registry)
    lora.apply(model, "q,v", r=8, alpha=16), lora.merge/unmerge/disabled(model), lora.save/load(model, dir)
                                   LoRA adapters (genmodels.lora; PEFT's adapter files; docs/lora.md)
"""
from . import models  # noqa: F401  (registers the built-in families: registry imports none)
from .native import attention as _native_attention  # noqa: F401  (registers nn/attention's "native" kernel)
from .config import ConfigError
from .models.config import ModelConfig
from .chat import chat, chat_stream
from .task_eval import eval_tasks
from .data.chat_template import apply_chat_template
from .embed import embed
from .generation import DecodeSession, generate
from .gist import GistCache, compress
from .generation.images import sample
from .interop.torch_dcgan import from_torch_dcgan
from .interop.torchscale import from_torchscale
from .io import export_diffusers, export_hf, load, load_tokenizer, save
from .registry import build_model, preset
from .quantize import quantize
from .spae import image_to_words, words_to_image
from . import lora  # noqa: E402  (genmodels.lora: adapters, after the families are registered)

__version__ = "0.1.0"
__all__ = ["ConfigError", "DecodeSession", "GistCache", "ModelConfig", "apply_chat_template", "build_model", "chat", "chat_stream", "compress", "embed", "eval_tasks", "export_diffusers", "export_hf", "from_torch_dcgan",
           "from_torchscale",
           "generate", "image_to_words", "load", "load_tokenizer", "lora", "preset", "quantize", "sample", "save",
           "words_to_image"]
