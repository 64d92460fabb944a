"""radixserve.lang: SGLang-style programs over a radixserve server or Engine (docs/frontend.md).

    from radixserve import lang

    @lang.function
    def qa(s, question):
        s += lang.system("You answer in one sentence.")
        s += lang.user(question)
        s += lang.assistant(lang.gen("answer", max_tokens=32, temperature=0))

    state = qa.run(question="What is the capital of France?", backend=lang.RuntimeEndpoint("http://127.0.0.1:30000"))
    print(state["answer"])
"""

from radixserve.lang.backends import (
    Backend,
    BackendError,
    EngineBackend,
    GenerateCall,
    GenerateResult,
    RuntimeEndpoint,
)
from radixserve.lang.function import Program, function, set_default_backend
from radixserve.lang.interpreter import ChoiceScores, ForkGroup, ProgramState, score_choices
from radixserve.lang.ir import Gen, Role, Select, assistant, gen, select, system, user

__all__ = [
    "Backend", "BackendError", "ChoiceScores", "EngineBackend", "ForkGroup", "Gen", "GenerateCall",
    "GenerateResult", "Program", "ProgramState", "Role", "RuntimeEndpoint", "Select", "assistant", "function",
    "gen", "score_choices", "select", "set_default_backend", "system", "user",
]
