"""Writes the course notebooks, in English (notebooks/) and Spanish (notebooks/es/).

    python notebooks/build_course.py          # from anywhere: paths are relative to this file

Both languages come from the same cells: the code is written once, and every piece of prose
(markdown, comments, the explanation a guarded cell prints) is a pair (English, Spanish). In
code, a placeholder «name» is replaced by that cell's text for the language, so the two courses
cannot drift apart. Printed labels in code stay in English in both: the tests look for them.

The layout follows Fewbytes/rubber-docker: each notebook has a goal, short explanations each
followed by something to run and look at, exercises with hidden solutions (a collapsed
<details> block) and a "check your work" list.

Hosts differ (DESIGN.md section 6): the first cells of every notebook ask nsmagic what this
host allows, and define `%%when CONDITION -- WHAT`, which runs the rest of its cell only where
CONDITION holds and otherwise prints, in plain words, what the cell would have shown.
"""

from __future__ import annotations

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
LANGUAGES = {"en": HERE, "es": HERE / "es"}
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


class Md:
    """A markdown cell in both languages."""

    def __init__(self, en: str, es: str) -> None:
        self.text = {"en": en, "es": es}

    def render(self, lang: str) -> nbformat.NotebookNode:
        return new_markdown_cell(self.text[lang].strip("\n"))


class Code:
    """A code cell written once; «name» placeholders take the text of `words[name]`."""

    def __init__(self, source: str, tags: tuple[str, ...] = (), **words: tuple[str, str]):
        self.source, self.tags, self.words = source.strip("\n"), tags, words

    def render(self, lang: str) -> nbformat.NotebookNode:
        source = self.source
        for name, pair in self.words.items():
            source = source.replace(f"«{name}»", pair[0 if lang == "en" else 1])
        if "«" in source:
            raise ValueError(f"untranslated placeholder in:\n{source}")
        cell = new_code_cell(source)
        if self.tags:
            cell.metadata["tags"] = list(self.tags)
        return cell


def exercise(number: int, question: tuple[str, str], solution: tuple[str, str]) -> Md:
    """An exercise with its solution collapsed (a <details> block: click to open)."""
    heads = {"en": ("Exercise", "Solution"), "es": ("Ejercicio", "Solución")}
    texts = {}
    for index, lang in enumerate(("en", "es")):
        title, reveal = heads[lang]
        texts[lang] = (f"**{title} {number}.** {question[index].strip()}\n\n"
                       f"<details><summary>{reveal}</summary>\n\n{solution[index].strip()}\n\n"
                       "</details>")
    return Md(texts["en"], texts["es"])


# ---------------------------------------------------------------------------------------------
# The set-up every notebook starts with.

SETUP = Code('''
%load_ext nsmagic
%nsmagic doctor
''')

GUARDS = Code('''
import nsmagic, nsmagic.host
from IPython.core.magic import register_cell_magic

host = nsmagic.host.probe()        # «probe»
ISOLATED = host.tier != 'none'     # «isolated»
LIMITS = host.tier == 'full'       # «limits»
ROOT = host.is_root                # «root»

@register_cell_magic
def when(line, cell):
    """«doc»"""
    condition, _, what = line.partition(' -- ')
    if eval(condition, get_ipython().user_ns):
        get_ipython().run_cell(cell).raise_error()
    else:
        print(f'«not_run» (tier {host.tier!r}: {condition} is False). {what}')

print(f'tier: {host.tier} | ISOLATED: {ISOLATED} | LIMITS: {LIMITS} | ROOT: {ROOT}')
''',
    probe=("what this host allows (the same probe as the doctor's)",
           "lo que este host permite (la misma sonda que usa el doctor)"),
    isolated=("cells can get their own namespaces",
              "las celdas pueden tener sus propios namespaces"),
    limits=("... and real cgroup limits", "... y límites de cgroup reales"),
    root=("host-side networking (veth pairs, a bridge) needs root",
          "la red del lado del host (pares veth, un bridge) necesita root"),
    doc=("%%when CONDITION -- WHAT: run the cell below if CONDITION holds, else say WHAT it "
         "would show.",
         "%%when CONDICIÓN -- QUÉ: ejecuta la celda si se cumple CONDICIÓN; si no, cuenta QUÉ "
         "mostraría."),
    not_run=("NOT RUN on this host", "NO SE EJECUTA en este host"),
)

SETUP_TEXT = Md('''
## Set-up
Load nsmagic and ask what this machine allows. On a Linux machine where the notebook runs as
root, every line says *yes*. On hosted notebook services (Binder, for example) you are not
root and new namespaces are usually forbidden: the doctor says so and why. The next cell then
defines three flags and a small helper, `%%when`: a cell that starts with
`%%when ISOLATED -- ...` runs only where containers can be isolated, and otherwise **prints
what it would have shown**, so the notebook still runs from top to bottom.
''', '''
## Preparación
Cargamos nsmagic y preguntamos qué permite esta máquina. En un Linux donde el notebook corre
como root, todas las líneas dicen *yes*. En servicios de notebooks alojados (Binder, por
ejemplo) no eres root y normalmente no se pueden crear namespaces: el doctor lo dice y explica
por qué. La celda siguiente define tres indicadores y una pequeña ayuda, `%%when`: una celda que
empieza con `%%when ISOLATED -- ...` solo se ejecuta donde los contenedores pueden aislarse y,
si no, **imprime lo que habría mostrado**, así el notebook funciona de principio a fin.
''')


def header(title: tuple[str, str], goal: tuple[str, str]) -> list:
    return [
        Md(f"# {title[0]}\n\n**Goal.** {goal[0].strip()}",
           f"# {title[1]}\n\n**Objetivo.** {goal[1].strip()}"),
        SETUP_TEXT, SETUP, GUARDS,
    ]


def check_list(en: str, es: str) -> Md:
    return Md("## Check your work\n" + en.strip(), "## Comprueba lo aprendido\n" + es.strip())


# ---------------------------------------------------------------------------------------------
# 01: what is a container?

def notebook_01() -> list:
    return header(
        ("1. What is a container?", "1. ¿Qué es un contenedor?"),
        ("see that a container is an ordinary Linux process that the kernel shows a different "
         "world (namespaces) and gives a budget (cgroups), by asking the same questions from "
         "outside and from inside.",
         "ver que un contenedor es un proceso Linux normal al que el kernel le muestra otro "
         "mundo (namespaces) y le asigna un presupuesto (cgroups), haciendo las mismas "
         "preguntas desde fuera y desde dentro."),
    ) + [
        Md('''
## The view from outside
First the notebook's own process (the *kernel* that runs your cells): its process id, the
machine's name, how many processes it can see in `/proc`, and the namespaces it is in. Each
entry of `/proc/self/ns` is a link such as `pid:[4026531836]`: the number identifies one
namespace. Two processes in the same namespace show the same number.
''', '''
## La vista desde fuera
Primero, el propio proceso del notebook (el *kernel* que ejecuta tus celdas): su identificador
de proceso, el nombre de la máquina, cuántos procesos ve en `/proc` y en qué namespaces está.
Cada entrada de `/proc/self/ns` es un enlace como `pid:[4026531836]`: el número identifica un
namespace. Dos procesos en el mismo namespace muestran el mismo número.
'''),
        Code('''
import os, socket

NAMESPACES = ['pid', 'uts', 'ipc', 'net', 'mnt', 'user', 'cgroup', 'time']
outside_ns = {name: os.readlink(f'/proc/self/ns/{name}') for name in NAMESPACES}

print('my pid:', os.getpid())
print('host name:', socket.gethostname())
print('processes I can see:', len([p for p in os.listdir('/proc') if p.isdigit()]))
for name, link in outside_ns.items():
    print(f'  {name:7} {link}')
'''),
        Md('''
## The view from inside
Now the same questions from a cell run by `%%container`. `--out inside_ns` copies the
variable `inside_ns` back into the notebook when the cell ends, so we can compare.
''', '''
## La vista desde dentro
Ahora las mismas preguntas desde una celda ejecutada con `%%container`. `--out inside_ns`
copia la variable `inside_ns` de vuelta al notebook al terminar la celda, para comparar.
'''),
        Code('''
inside_ns = {}   # «filled»
'''.strip(), filled=("filled in by the next cell", "la rellena la celda siguiente")),
        Code('''
%%when ISOLATED -- «what»
%%container --hostname lab1 --out inside_ns
import os, socket

NAMESPACES = ['pid', 'uts', 'ipc', 'net', 'mnt', 'user', 'cgroup', 'time']
inside_ns = {name: os.readlink(f'/proc/self/ns/{name}') for name in NAMESPACES}

print('my pid:', os.getpid())
print('host name:', socket.gethostname())
print('processes I can see:', sorted(p for p in os.listdir('/proc') if p.isdigit()))
''', what=("Inside a container this prints 'my pid: 2' (the child of the container's pid 1), "
           "host name lab1, and only the processes ['1', '2'].",
           "Dentro de un contenedor esto imprime 'my pid: 2' (el hijo del pid 1 del "
           "contenedor), el nombre lab1 y solo los procesos ['1', '2'].")),
        Md('''
## Same or different?
Put the two sets of links side by side. Every namespace the container got is *different*;
the ones it shares with the notebook are the *same*.
''', '''
## ¿Iguales o distintos?
Ponemos los dos conjuntos de enlaces lado a lado. Cada namespace que recibió el contenedor es
*distinto*; los que comparte con el notebook son *iguales*.
'''),
        Code('''
if inside_ns:
    print(f"{'namespace':10} {'notebook':22} {'container':22}")
    for name in NAMESPACES:
        verdict = 'same' if outside_ns[name] == inside_ns[name] else 'different'
        print(f'{name:10} {outside_ns[name]:22} {inside_ns[name]:22} {verdict}')
else:
    print('«none»')
''', none=("No container ran on this host, so there is nothing to compare: on a host that "
           "allows namespaces, pid, uts, ipc, net, mnt and cgroup come out different.",
           "En este host no se ejecutó ningún contenedor, así que no hay nada que comparar: "
           "donde se permiten namespaces, pid, uts, ipc, net, mnt y cgroup salen distintos.")),
        Md('''
## `ps` from inside
`ps` knows nothing about containers: it lists `/proc`. Inside, `/proc` is a fresh one that
only shows the container's processes: `nsmagic-init` as pid 1, the shell, and `ps` itself.
The container's own control group is visible read-only at `/sys/fs/cgroup`.
''', '''
## `ps` desde dentro
`ps` no sabe nada de contenedores: lista `/proc`. Dentro, `/proc` es uno nuevo que solo
muestra los procesos del contenedor: `nsmagic-init` como pid 1, el shell y el propio `ps`.
El grupo de control del contenedor se ve, de solo lectura, en `/sys/fs/cgroup`.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container bash --hostname lab1
echo "hostname: $(hostname)"
ps -e -o pid,ppid,comm
echo "my cgroup: $(head -n 1 /proc/self/cgroup)"
''', what=("Inside, ps lists only the container's processes: 1 nsmagic-init, 2 sh, and ps "
           "itself.",
           "Dentro, ps lista solo los procesos del contenedor: 1 nsmagic-init, 2 sh y el "
           "propio ps.")),
        Md('''
## A container seen from the host
A container is still a process on the host, with a host pid. Start a named container (it
keeps running between cells), then look it up in the *host's* `/proc`: the `NSpid` line of
its status lists its pid in each pid namespace it belongs to, outermost first, and its
namespace links differ from ours.
''', '''
## Un contenedor visto desde el host
Un contenedor sigue siendo un proceso del host, con un pid del host. Arrancamos un contenedor
con nombre (sigue vivo entre celdas) y lo buscamos en el `/proc` *del host*: la línea `NSpid`
de su estado da su pid en cada namespace de pid al que pertenece, del más externo al más
interno, y sus enlaces de namespace difieren de los nuestros.
'''),
        Code('''
%%when ISOLATED -- «what»
%container start box --hostname box
from nsmagic.runtime.named import MANAGER   # «manager»
host_pid = MANAGER.get('box').result.pid
status = dict(line.split(':', 1) for line in open(f'/proc/{host_pid}/status'))
print('host pid of the container\\'s pid 1:', host_pid)
print('NSpid (host, container):', status['NSpid'].split())
try:
    print('its uts link:', os.readlink(f'/proc/{host_pid}/ns/uts'), '- ours:', outside_ns['uts'])
except PermissionError:
    print('its uts link: «denied»')
%container rm -f box
''', denied=("not readable by this unprivileged notebook (the kernel lets only processes "
                   "with rights over a process read its namespace links)",
                   "este notebook sin privilegios no puede leerlo (el kernel solo deja leer los "
                   "enlaces de namespace a quien tiene derechos sobre el proceso)"),
            what=("With namespaces, the container's pid 1 has a host pid too; NSpid shows both "
           "numbers, e.g. ['23456', '1'].",
           "Con namespaces, el pid 1 del contenedor también tiene un pid del host; NSpid "
           "muestra los dos números, p. ej. ['23456', '1']."),
            manager=("the named containers of this kernel",
                     "los contenedores con nombre de este kernel")),
        exercise(1, (
            "Run the inside cell again with `--no-uts` added to the `%%container` line. Which "
            "link becomes *same*, and what host name does the cell print now?",
            "Vuelve a ejecutar la celda de dentro añadiendo `--no-uts` a la línea de "
            "`%%container`. ¿Qué enlace pasa a ser *same* y qué nombre de host imprime ahora?"),
            (
            "`uts` becomes *same*, and the cell prints the host's own name: `--hostname` needs "
            "a UTS namespace of its own (nsmagic refuses the combination and says why). Without "
            "a private UTS namespace the container shares the machine's host name.",
            "`uts` pasa a ser *same* y la celda imprime el nombre del propio host: "
            "`--hostname` necesita un namespace UTS propio (nsmagic rechaza la combinación y "
            "explica por qué). Sin UTS privado, el contenedor comparte el nombre de la máquina.")),
        exercise(2, (
            "The `time` namespace stayed *same*. Also `user`, when the notebook runs as root. "
            "Why is that no problem for `user` here, and what does `--userns` change?",
            "El namespace `time` quedó *same*. También `user`, cuando el notebook corre como "
            "root. ¿Por qué no es un problema para `user` aquí y qué cambia `--userns`?"),
            (
            "As root, nsmagic does not need a user namespace to create the others, so root "
            "inside the container *is* the host's uid 0, held back by everything else: the "
            "other namespaces, a read-only view of the host's files, Docker's capability set "
            "and seccomp filter, and cgroups. `--userns` gives it its own user namespace: root "
            "inside then maps to another uid outside, a range of host ids of the container's "
            "own when the notebook runs as root (notebook 2 shows it). nsmagic does not create "
            "time namespaces: a container shares the host's clocks.",
            "Como root, nsmagic no necesita un namespace de usuario para crear los demás, así "
            "que root dentro del contenedor *es* el uid 0 del host, frenado por todo lo demás: "
            "los otros namespaces, una vista de solo lectura de los ficheros del host, las "
            "capacidades y el filtro seccomp de Docker, y los cgroups. `--userns` le da su "
            "propio namespace de usuario: root dentro corresponde entonces a otro uid fuera, un "
            "rango de ids del host propio del contenedor si el notebook corre como root (lo "
            "verás en el notebook 2). nsmagic no crea namespaces de tiempo: el contenedor "
            "comparte los relojes del host.")),
        exercise(3, (
            "Inside a container, what is the name of process 1? Read `/proc/1/comm` from a "
            "`%%container` cell, then from the notebook.",
            "Dentro de un contenedor, ¿cómo se llama el proceso 1? Lee `/proc/1/comm` desde una "
            "celda `%%container` y luego desde el notebook."),
            (
            "```python\n%%container\nprint(open('/proc/1/comm').read())   # nsmagic-init\n```\n"
            "From the notebook, `/proc/1/comm` names the host's init (for example `systemd`, "
            "or the first process of the machine's own container).",
            "```python\n%%container\nprint(open('/proc/1/comm').read())   # nsmagic-init\n```\n"
            "Desde el notebook, `/proc/1/comm` da el init del host (por ejemplo `systemd`, o el "
            "primer proceso del contenedor de la propia máquina).")),
        check_list('''
- [ ] The container printed `my pid: 2` and saw only `['1', '2']`, while the notebook sees
  hundreds of processes.
- [ ] You can tell from `/proc/self/ns` which namespaces two processes share.
- [ ] You found the container's pid 1 in the host's `/proc` and read both of its pids.

Next: `02-namespaces.ipynb`, one namespace at a time.
''', '''
- [ ] El contenedor imprimió `my pid: 2` y solo vio `['1', '2']`, mientras el notebook ve
  cientos de procesos.
- [ ] Sabes decir, mirando `/proc/self/ns`, qué namespaces comparten dos procesos.
- [ ] Encontraste el pid 1 del contenedor en el `/proc` del host y leíste sus dos pids.

Siguiente: `02-namespaces.ipynb`, un namespace cada vez.
'''),
    ]


# ---------------------------------------------------------------------------------------------
# 02: namespaces one by one

IPC_NOTE = ("POSIX message queues live in librt (in libc on recent glibc)",
            "las colas POSIX están en librt (en libc con glibc reciente)")
IPC_HELPERS = '''
import ctypes, ctypes.util, errno, os
libc = ctypes.CDLL(None, use_errno=True)
librt = ctypes.CDLL(ctypes.util.find_library('rt'), use_errno=True)   # «librt»
librt.mq_open.restype = ctypes.c_int
IPC_CREAT, O_RDWR, O_CREAT = 0o1000, 0o2, 0o100
'''


def notebook_02() -> list:
    return header(
        ("2. Namespaces, one by one", "2. Los namespaces, uno a uno"),
        ("meet each namespace in turn (PID, UTS, IPC, NET, USER, MOUNT), each time looking "
         "from inside the container and from the notebook outside it.",
         "conocer cada namespace por turno (PID, UTS, IPC, NET, USER, MOUNT), mirando cada "
         "vez desde dentro del contenedor y desde el notebook, fuera de él."),
    ) + [
        # PID ------------------------------------------------------------------------------
        Md('''
## PID: a process tree of its own
In a new PID namespace the first process is **pid 1** and only the namespace's own processes
are visible. nsmagic's init is pid 1 and your cell runs as its child, pid 2. The `/proc`
inside is mounted fresh for the namespace, so `ps` and `os.listdir('/proc')` agree.

*Documentation:* `man 7 pid_namespaces`.
''', '''
## PID: un árbol de procesos propio
En un namespace de PID nuevo el primer proceso es el **pid 1** y solo se ven los procesos del
propio namespace. El init de nsmagic es el pid 1 y tu celda corre como su hijo, el pid 2. El
`/proc` de dentro se monta de nuevo para el namespace, así que `ps` y `os.listdir('/proc')`
coinciden.

*Documentación:* `man 7 pid_namespaces`.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container
import os
print('my pid:', os.getpid(), '- my parent:', os.getppid())
print('pids:', sorted(p for p in os.listdir('/proc') if p.isdigit()))
print('pid 1 is', open('/proc/1/comm').read().strip())
''', what=("Inside: 'my pid: 2 - my parent: 1', pids: ['1', '2'], and pid 1 is nsmagic-init.",
           "Dentro: 'my pid: 2 - my parent: 1', pids: ['1', '2'], y el pid 1 es "
           "nsmagic-init.")),
        Md('''
From outside, the same container's processes have ordinary host pids. A named container
lives on between cells, so we can look at it from both sides:
''', '''
Desde fuera, los procesos del mismo contenedor tienen pids normales del host. Un contenedor
con nombre sigue vivo entre celdas, así que podemos mirarlo desde los dos lados:
'''),
        Code('''
%%when ISOLATED -- «what»
%container start pidbox
''', what=("A named container 'pidbox' would start.",
           "Arrancaría un contenedor con nombre 'pidbox'.")),
        Code('''
%%when ISOLATED -- «what»
%%container pidbox
import os
print('inside, my pid is', os.getpid())
''', what=("Inside pidbox, cells run as pid 2.",
           "Dentro de pidbox, las celdas corren como pid 2.")),
        Code('''
%%when ISOLATED -- «what»
import os
from nsmagic.runtime.named import MANAGER
host_pid = MANAGER.get('pidbox').result.pid          # «hostpid»
for line in open(f'/proc/{host_pid}/status'):
    if line.startswith(('Name', 'NSpid')):
        print(line.strip())
print('the notebook sees', len([p for p in os.listdir('/proc') if p.isdigit()]), 'processes')
%container rm -f pidbox
''', what=("From the host, pidbox's init has an ordinary pid; 'NSpid: <host pid> 1' shows its "
           "two numbers.",
           "Desde el host, el init de pidbox tiene un pid normal; 'NSpid: <pid del host> 1' "
           "muestra sus dos números."),
            hostpid=("the host pid of the container's pid 1",
                     "el pid en el host del pid 1 del contenedor")),
        exercise(1, (
            "What happens to the other processes of a container when its pid 1 exits? Start "
            "`sleep 100 &` in a `%%container bash` cell and look for that `sleep` on the host "
            "afterwards (`pgrep -a sleep`).",
            "¿Qué pasa con los demás procesos de un contenedor cuando su pid 1 termina? Lanza "
            "`sleep 100 &` en una celda `%%container bash` y busca después ese `sleep` en el "
            "host (`pgrep -a sleep`)."),
            (
            "It is gone: when the pid 1 of a namespace exits, the kernel kills every other "
            "process in it (SIGKILL). nsmagic's init also kills leftovers itself when the cell "
            "ends. No container process outlives its cell.",
            "Ya no está: cuando el pid 1 de un namespace termina, el kernel mata a todos los "
            "demás procesos que contiene (SIGKILL). El init de nsmagic además elimina los "
            "restos al acabar la celda. Ningún proceso del contenedor sobrevive a su celda.")),
        # UTS ------------------------------------------------------------------------------
        Md('''
## UTS: a host name of its own
The UTS namespace holds the host name (and the NIS domain name). Inside, the container may
change it without touching the machine's.

*Documentation:* `man 7 uts_namespaces`.
''', '''
## UTS: un nombre de host propio
El namespace UTS guarda el nombre del host (y el dominio NIS). Dentro, el contenedor puede
cambiarlo sin tocar el de la máquina.

*Documentación:* `man 7 uts_namespaces`.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container --hostname lab1
import socket
print('host name inside:', socket.gethostname())
try:
    socket.sethostname('renamed-inside')
    print('renamed from inside, now:', socket.gethostname())
except PermissionError as error:
    print('renaming from inside refused:', error.strerror)
''', what=("Inside: 'host name inside: lab1'.", "Dentro: 'host name inside: lab1'.")),
        Md('''
Whether the cell may rename its host depends on its *capabilities*: by default nsmagic keeps
only the ones Docker gives a container, and `CAP_SYS_ADMIN` (which `sethostname` needs) is
not among them. Either way, only the container's UTS namespace could change: the name the
host's `--hostname` option sets is written before the cell starts.
''', '''
Que la celda pueda renombrar su host depende de sus *capacidades*: por defecto nsmagic solo
conserva las que Docker da a un contenedor, y `CAP_SYS_ADMIN` (que necesita `sethostname`) no
está entre ellas. En cualquier caso, solo cambiaría el namespace UTS del contenedor: el nombre
que fija la opción `--hostname` se escribe antes de que empiece la celda.
'''),
        Code('''
import socket
print('host name outside:', socket.gethostname())   # «same»
''', same=("unchanged", "sin cambios")),
        # IPC ------------------------------------------------------------------------------
        Md('''
## IPC: message queues of its own
The IPC namespace isolates System V IPC objects (message queues, semaphores, shared memory)
and POSIX message queues. We create one of each on the host with `ctypes` (Python has no
built-in module for them), then look for them from inside.

*Documentation:* `man 7 ipc_namespaces`, `man 2 msgget`, `man 3 mq_open`.
''', '''
## IPC: colas de mensajes propias
El namespace IPC aísla los objetos IPC de System V (colas de mensajes, semáforos, memoria
compartida) y las colas de mensajes POSIX. Creamos una de cada en el host con `ctypes` (Python
no trae un módulo para ellas) y las buscamos desde dentro.

*Documentación:* `man 7 ipc_namespaces`, `man 2 msgget`, `man 3 mq_open`.
'''),
        Code(IPC_HELPERS + '''
KEY = 0x4E530000 + os.getpid() % 0xFFFF       # «key»
QUEUE = f'/nsmagic-lab-{os.getpid()}'          # «queue»
sysv_id = libc.msgget(KEY, IPC_CREAT | 0o600)
posix_fd = librt.mq_open(QUEUE.encode(), O_CREAT | O_RDWR, 0o600, None)
print(f'host: System V queue key {KEY:#x} -> id {sysv_id}; POSIX queue {QUEUE} -> fd {posix_fd}')
print('host: the System V queue is listed in /proc/sysvipc/msg:',
      any(f'{KEY}' in line.split()[:1] for line in open('/proc/sysvipc/msg')))
''', librt=IPC_NOTE,
            key=("a key of our own, so two notebooks do not clash",
                 "una clave propia, para que dos notebooks no choquen"),
            queue=("POSIX queue names start with a slash",
                   "los nombres de colas POSIX empiezan por barra")),
        Code('''
%%when ISOLATED -- «what»
%%container --in KEY,QUEUE
''' + IPC_HELPERS + '''
sysv = libc.msgget(KEY, 0)
print('inside: System V queue:', 'found' if sysv >= 0 else errno.errorcode[ctypes.get_errno()])
posix = librt.mq_open(QUEUE.encode(), O_RDWR, 0, None)
print('inside: POSIX queue:', 'found' if posix >= 0 else errno.errorcode[ctypes.get_errno()])
print('inside: /proc/sysvipc/msg has', len(open('/proc/sysvipc/msg').readlines()) - 1, 'queues')
''', what=("Inside a new IPC namespace both queues are missing: ENOENT, and "
           "/proc/sysvipc/msg lists 0 queues.",
           "Dentro de un namespace IPC nuevo las dos colas faltan: ENOENT, y "
           "/proc/sysvipc/msg lista 0 colas."),
            librt=IPC_NOTE),
        Code('''
%%when ISOLATED -- «what»
%%container --no-ipc --in KEY,QUEUE
''' + IPC_HELPERS + '''
sysv = libc.msgget(KEY, 0)
posix = librt.mq_open(QUEUE.encode(), O_RDWR, 0, None)
print('with --no-ipc: System V queue', 'found' if sysv >= 0 else 'missing')
print('with --no-ipc: POSIX queue', 'found' if posix >= 0 else 'missing')
''', what=("With --no-ipc the container shares the host's IPC namespace and finds both queues.",
           "Con --no-ipc el contenedor comparte el namespace IPC del host y encuentra las dos "
           "colas."), librt=IPC_NOTE),
        Code('''
libc.msgctl(sysv_id, 0, None)            # «rmid»
os.close(posix_fd); librt.mq_unlink(QUEUE.encode())
print('host: both queues removed')
''', rmid=("IPC_RMID: remove the System V queue", "IPC_RMID: borra la cola System V")),
        # NET ------------------------------------------------------------------------------
        Md('''
## NET: interfaces of its own
A new network namespace starts with only a loopback interface (`lo`, nsmagic brings it up):
no route anywhere, so nothing leaves the container.

*Documentation:* `man 7 network_namespaces`, `man 4 veth`.
''', '''
## NET: interfaces propias
Un namespace de red nuevo empieza solo con la interfaz de loopback (`lo`, que nsmagic
activa): sin rutas a ningún sitio, así que nada sale del contenedor.

*Documentación:* `man 7 network_namespaces`, `man 4 veth`.
'''),
        Code('''
print('outside:', [name for _, name in socket.if_nameindex()])
'''),
        Code('''
%%when ISOLATED -- «what»
%%container
import socket
print('inside:', [name for _, name in socket.if_nameindex()])
try:
    socket.create_connection(('192.0.2.1', 80), timeout=2)   # «testnet»
except OSError as error:
    print('connecting out:', error)
''', what=("Inside: only ['lo'], and connecting out fails with 'Network is unreachable'.",
           "Dentro: solo ['lo'], y conectar hacia fuera falla con 'Network is unreachable'."),
            testnet=("an address reserved for documentation", "una dirección reservada para "
                     "documentación")),
        Md('''
### Two containers on a bridge
With `--net bridge` nsmagic gives each container one end of a *veth pair* (a virtual cable);
the other end is plugged into a bridge on the host, which also has an address. So containers
reach each other, and the notebook reaches them. Creating veth pairs and bridges on the host
needs root there: on other hosts these cells say so instead.
''', '''
### Dos contenedores en un bridge
Con `--net bridge` nsmagic da a cada contenedor un extremo de un *par veth* (un cable
virtual); el otro extremo se enchufa a un bridge del host, que también tiene dirección. Así los
contenedores se alcanzan entre sí y el notebook los alcanza a ellos. Crear pares veth y bridges
en el host requiere root allí: en otros hosts estas celdas lo dicen en vez de ejecutarse.
'''),
        Code('''
%%when ROOT -- «what»
%container start server --net bridge --hostname server
%container start client --net bridge --hostname client
%container ls
''', what=("Two containers, server and client, would each get an address in 10.213.x.0/24 "
           "(shown by %container ls).",
           "Dos contenedores, server y client, recibirían cada uno una dirección en "
           "10.213.x.0/24 (la muestra %container ls).")),
        Code('''
%%when ROOT -- «what»
%%container server
import http.server, socket, threading

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f'hello from {socket.gethostname()}\\n'.encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):   # «quiet»
        pass

httpd = http.server.HTTPServer(('0.0.0.0', 8000), Hello)
threading.Thread(target=httpd.serve_forever, daemon=True).start()   # «lives»
print('server listening on', [name for _, name in socket.if_nameindex()])
''', what=("A small web server would start inside 'server', listening on its eth0.",
           "Arrancaría un pequeño servidor web dentro de 'server', escuchando en su eth0."),
            quiet=("no log lines on stderr", "sin líneas de log en stderr"),
            lives=("keeps serving after the cell: the container lives on",
                   "sigue sirviendo tras la celda: el contenedor sigue vivo")),
        Code('''
%%when ROOT -- «what»
from nsmagic.runtime.named import MANAGER
address = MANAGER.get('server').result.address   # «addr»
print('server address:', address)
''', what=("The notebook would learn the server's bridge address, e.g. 10.213.7.2.",
           "El notebook obtendría la dirección del servidor en el bridge, p. ej. 10.213.7.2."),
            addr=("the same address %container ls shows", "la misma dirección que muestra "
                  "%container ls")),
        Code('''
%%when ROOT -- «what»
%%container client --in address
import urllib.request
reply = urllib.request.urlopen(f'http://{address}:8000', timeout=5).read().decode()
print('client got:', reply.strip())
''', what=("The client container would fetch 'hello from server' over the veth bridge.",
           "El contenedor client recibiría 'hello from server' a través del bridge veth.")),
        Code('''
%%when ROOT -- «what»
import urllib.request
reply = urllib.request.urlopen(f'http://{address}:8000', timeout=5).read().decode()
print('notebook got:', reply.strip())
%container rm -f server
%container rm -f client
''', what=("The notebook itself would fetch 'hello from server' through the host's end of "
           "the bridge.",
           "El propio notebook recibiría 'hello from server' por el extremo del bridge en el "
           "host.")),
        exercise(2, (
            "Start a third container with `--net container:server`. Which interfaces does it "
            "see, and can it reach the server on `127.0.0.1:8000`?",
            "Arranca un tercer contenedor con `--net container:server`. ¿Qué interfaces ve? "
            "¿Puede alcanzar el servidor en `127.0.0.1:8000`?"),
            (
            "It joins server's network namespace instead of getting its own: it sees the same "
            "`lo` and `eth0` and the same address, and `127.0.0.1:8000` is the server "
            "(containers of a Kubernetes pod share a network namespace like this).\n\n"
            "```python\n%container start server --net bridge\n"
            "%container start buddy --net container:server\n```",
            "Se une al namespace de red de server en lugar de tener uno propio: ve los mismos "
            "`lo` y `eth0` con la misma dirección, y `127.0.0.1:8000` es el servidor (los "
            "contenedores de un pod de Kubernetes comparten red así).\n\n"
            "```python\n%container start server --net bridge\n"
            "%container start buddy --net container:server\n```")),
        # USER -----------------------------------------------------------------------------
        Md('''
## USER: root inside, someone else outside
A user namespace maps user ids: with `--userns`, uid 0 inside the container is another uid
outside (`/proc/self/uid_map` shows the mapping: *inside, outside, count*). Which one depends
on who runs the notebook:

- as **root**, nsmagic gives each container a range of 65536 host ids of its own, which no
  user of the host has: root inside is, outside, a uid no one else owns;
- as an **ordinary user**, root inside is that user itself (its subordinate ids, if it has
  any, serve the other ids inside): it can do no more than the user already could.

The kernel lets root inside do root things to what its namespaces own (set the host name,
mount a tmpfs; nsmagic, as Docker, still drops those capabilities and its seccomp filter
refuses `mount`, unless `--privileged`), but a file it writes in a shared folder belongs to
its uid outside, and files whose owner has no id inside stay out of its reach. When the
notebook does not run as root, nsmagic always uses a user namespace.

A container sees a host folder only when it is shared: `--volume HOST:CONTAINER` bind-mounts
one (the MOUNT section below says more). Here the notebook makes a folder in `/var/tmp`, with
one file only it may read, and shares the folder as `/lab`.

*Documentation:* `man 7 user_namespaces`.
''', '''
## USER: root dentro, otro fuera
Un namespace de usuario traduce identificadores: con `--userns`, el uid 0 dentro del
contenedor es otro uid fuera (`/proc/self/uid_map` muestra la traducción: *dentro, fuera,
cantidad*). Cuál depende de quién ejecuta el notebook:

- como **root**, nsmagic da a cada contenedor un rango propio de 65536 ids del host que no
  tiene ningún usuario del host: root dentro es, fuera, un uid que no es de nadie más;
- como **usuario normal**, root dentro es ese mismo usuario (sus ids subordinados, si los
  tiene, sirven para los demás ids de dentro): no puede hacer más de lo que el usuario ya
  podía.

El kernel deja a root dentro hacer cosas de root sobre lo que poseen sus namespaces (cambiar
el nombre del host, montar un tmpfs; nsmagic, como Docker, quita igualmente esas capacidades y
su filtro seccomp rechaza `mount`, salvo con `--privileged`), pero un fichero que escribe en una
carpeta compartida pertenece a su uid de fuera, y los ficheros cuyo dueño no tiene id dentro
quedan fuera de su alcance. Si el notebook no corre como root, nsmagic siempre usa un
namespace de usuario.

Un contenedor solo ve una carpeta del host si se comparte: `--volume HOST:CONTENEDOR` la monta
(la sección MOUNT de abajo cuenta más). Aquí el notebook crea una carpeta en `/var/tmp`, con un
fichero que solo él puede leer, y la comparte como `/lab`.

*Documentación:* `man 7 user_namespaces`.
'''),
        Code('''
import pwd, shutil, tempfile
labdir = tempfile.mkdtemp(prefix='nsmagic-lab-', dir='/var/tmp')
os.chmod(labdir, 0o777)   # «shared»
private = os.path.join(labdir, 'notebook-only.txt')
with open(private, 'w') as handle:
    handle.write('for the notebook only\\n')
os.chmod(private, 0o600)   # «private»
print('notebook runs as uid', os.getuid(), f'({pwd.getpwuid(os.getuid()).pw_name})')
print('shared folder:', labdir, '- its private file is owned by', os.stat(private).st_uid)
''', shared=("both sides may write the folder", "los dos lados pueden escribir en la carpeta"),
            private=("only its owner may read it", "solo su dueño puede leerlo")),
        Code('''
%%when ISOLATED -- «what»
%%container --userns --volume {labdir}:/lab
import os
print('uid inside:', os.getuid())
print('uid_map:', open('/proc/self/uid_map').read().split())
with open('/lab/written-inside.txt', 'w') as handle:
    handle.write('hello\\n')
print('owner seen inside:', os.stat('/lab/written-inside.txt').st_uid)
print('the notebook\\'s private file, owner seen inside:',
      os.stat('/lab/notebook-only.txt').st_uid)   # «overflow»
try:
    open('/lab/notebook-only.txt').read()
    print('reading the notebook\\'s private file: allowed')
except OSError as error:
    print('reading the notebook\\'s private file:', type(error).__name__)
''', what=("Inside: 'uid inside: 0', and the file it writes in /lab is owned by 0 as seen "
           "inside. As root, uid_map maps 0 to a range of 65536 host ids of the container's "
           "own, and the notebook's private file (owner 0 outside, 65534 as seen inside) "
           "cannot be read: PermissionError.",
           "Dentro: 'uid inside: 0', y el fichero que escribe en /lab pertenece a 0 visto "
           "desde dentro. Como root, uid_map traduce 0 a un rango propio de 65536 ids del "
           "host, y el fichero privado del notebook (dueño 0 fuera, 65534 visto desde dentro) "
           "no se puede leer: PermissionError."),
            overflow=("an owner with no id inside shows as 65534",
                      "un dueño sin id dentro aparece como 65534")),
        Code('''
path = os.path.join(labdir, 'written-inside.txt')
if os.path.exists(path):
    owner = os.stat(path).st_uid
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:   # «noname»
        name = 'no user of this host: a uid of the container\\'s own range'
    print('owner seen outside:', owner, f'({name})')
else:
    print('«nofile»')
shutil.rmtree(labdir)
''', noname=("/etc/passwd has no name for this uid",
             "/etc/passwd no tiene nombre para este uid"),
            nofile=("No container wrote the file on this host. Where one can, the owner seen "
                    "outside is the uid root inside maps to: a uid of a range the container "
                    "has to itself, which no host user has, when the notebook runs as root; "
                    "the user running the notebook otherwise.",
                    "En este host ningún contenedor escribió el fichero. Donde se puede, el "
                    "dueño visto desde fuera es el uid al que corresponde root dentro: un uid "
                    "del rango propio del contenedor, que no tiene ningún usuario del host, si "
                    "el notebook corre como root; si no, el propio usuario del notebook.")),
        # MOUNT ----------------------------------------------------------------------------
        Md('''
## MOUNT: a file system view of its own
A mount namespace has its own list of mounts, and nsmagic builds a whole root in it, as
Docker does from an image. Its root is a **read-only view** of the host's userland: `/usr`,
`/etc` (with the host's secrets masked: `/etc/shadow` reads as an empty file), and the
notebook's Python and nsmagic at their usual paths. On top lies a **private writable layer**
(an overlay): writes succeed inside and vanish with the container. `/tmp`, `/var`, `/home`,
`/root`, `/run` and `/srv` are the container's own and start empty; `/proc` is a fresh one.
The host's other files are simply not there: a host folder is shared only with
`--volume HOST:CONTAINER[:ro]` (`--volume .` shares the notebook's folder at its own path
and starts the container there).

*Documentation:* `man 7 mount_namespaces`, `man 8 mount` (overlay).
''', '''
## MOUNT: una vista propia del sistema de ficheros
Un namespace de montaje tiene su propia lista de montajes, y nsmagic construye en él una raíz
completa, como Docker a partir de una imagen. Su raíz es una **vista de solo lectura** del
userland del host: `/usr`, `/etc` (con los secretos del host ocultos: `/etc/shadow` se lee como
un fichero vacío), y el Python del notebook y nsmagic en sus rutas de siempre. Encima hay una
**capa escribible privada** (un overlay): las escrituras funcionan dentro y desaparecen con el
contenedor. `/tmp`, `/var`, `/home`, `/root`, `/run` y `/srv` son del contenedor y empiezan
vacíos; `/proc` es uno nuevo. Los demás ficheros del host sencillamente no están: una carpeta
del host solo se comparte con `--volume HOST:CONTENEDOR[:ro]` (`--volume .` comparte la carpeta
del notebook en su misma ruta y arranca el contenedor allí).

*Documentación:* `man 7 mount_namespaces`, `man 8 mount` (overlay).
'''),
        Code('''
marker = f'/tmp/nsmagic-outside-{os.getpid()}.txt'
open(marker, 'w').write('written by the notebook\\n')
print('outside, /tmp has', len(os.listdir('/tmp')), 'entries, including', marker)
probe = f'/var/tmp/nsmagic-outside-{os.getpid()}.txt'
open(probe, 'w').write('written by the notebook\\n')
print('outside, /var/tmp has', len(os.listdir('/var/tmp')), 'entries, including', probe)
'''),
        Code('''
%%when ISOLATED -- «what»
%%container --in marker,probe
import os
print('inside, /tmp entries:', os.listdir('/tmp'))
print('inside, the notebook\\'s file exists:', os.path.exists(marker))
print('inside, /var/tmp entries:', os.listdir('/var/tmp'))
print('inside, the notebook\\'s /var/tmp file exists:', os.path.exists(probe))
print('inside, /etc/shadow:', len(open('/etc/shadow').read()), 'bytes')   # «masked»
open('/tmp/written-inside.txt', 'w').write('only here\\n')
print('inside, /tmp now:', os.listdir('/tmp'))
''', what=("Inside, /tmp and /var/tmp are empty ([]), neither of the notebook's files is "
           "there, /etc/shadow reads as 0 bytes, and a file written in /tmp stays inside.",
           "Dentro, /tmp y /var/tmp están vacíos ([]), ninguno de los ficheros del notebook "
           "está, /etc/shadow se lee como 0 bytes y lo que se escribe en /tmp se queda "
           "dentro."),
            masked=("the host's secrets are masked in the view",
                    "los secretos del host están ocultos en la vista")),
        Code('''
print('outside, /tmp/written-inside.txt exists:', os.path.exists('/tmp/written-inside.txt'))
os.remove(marker)
'''),
        Md('''
The writable layer is there by default (`--overlay` says the same, and is accepted): a
container may even write into `/etc`, and the file exists inside only.
''', '''
La capa escribible está ahí por defecto (`--overlay` dice lo mismo y se acepta): un
contenedor puede incluso escribir en `/etc`, y el fichero solo existe dentro.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container
DEMO = '/etc/nsmagic-overlay-demo.txt'
open(DEMO, 'w').write('written into /etc\\n')
print('inside,', DEMO, 'says:', open(DEMO).read().strip())
''', what=("A default container may write into /etc: the write lands in its private layer, "
           "and the file exists inside only.",
           "Un contenedor por defecto puede escribir en /etc: la escritura cae en su capa "
           "privada y el fichero solo existe dentro.")),
        Code('''
DEMO = '/etc/nsmagic-overlay-demo.txt'
print('outside,', DEMO, 'exists:', os.path.exists(DEMO))
'''),
        Md('''
`--read-only` keeps the same view without the writable layer: nothing of the root can be
written, except the private `/tmp` and `/dev/shm`.
''', '''
`--read-only` deja la misma vista sin la capa escribible: no se puede escribir nada de la
raíz, salvo el `/tmp` privado y `/dev/shm`.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container --read-only
for path in ('/var/tmp/nsmagic-read-only-test.txt', '/tmp/scratch.txt'):
    try:
        open(path, 'w').write('x')
        print('wrote', path)
    except OSError as error:
        print('refused', path, '-', error.strerror)
''', what=("With --read-only: writing /var/tmp is refused ('Read-only file system'), the "
           "private /tmp stays writable.",
           "Con --read-only: escribir en /var/tmp se rechaza ('Read-only file system'); el "
           "/tmp privado sigue siendo escribible.")),
        Md('''
### Giving the view up: `--host-root`
`--host-root` gives the view up: the container's root is the host's own, read-write, as for
any process outside a container. The other namespaces still apply (the container keeps its own
`/tmp` and `/proc`), but every host file its user may change, it can change. nsmagic labels
such a run loudly (`HOST ROOT: ...`). Here it finds the notebook's file in `/var/tmp`, which
the default container could not see, and deletes it on the host.
''', '''
### Renunciar a la vista: `--host-root`
`--host-root` renuncia a la vista: la raíz del contenedor es la del propio host, escribible,
como para cualquier proceso fuera de un contenedor. Los demás namespaces siguen (el
contenedor conserva su `/tmp` y su `/proc`), pero puede cambiar todo fichero del host que su
usuario pueda cambiar. nsmagic marca esa ejecución bien a la vista (`HOST ROOT: ...`). Aquí
encuentra el fichero del notebook en `/var/tmp`, que el contenedor por defecto no veía, y lo
borra en el host.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container --host-root --in probe
import os
print('with --host-root: the notebook\\'s /var/tmp file exists:', os.path.exists(probe))
os.remove(probe)   # «remove»
print('with --host-root: removed', probe)
''', what=("With --host-root the container sees the host's own /var/tmp, finds the "
           "notebook's file there and removes it on the host (nsmagic prints 'HOST ROOT: ...').",
           "Con --host-root el contenedor ve el /var/tmp del propio host, encuentra allí el "
           "fichero del notebook y lo borra en el host (nsmagic imprime 'HOST ROOT: ...')."),
            remove=("a change to the host's own files", "un cambio en los ficheros del propio "
                    "host")),
        Code('''
exists = os.path.exists(probe)
print('outside, after --host-root: the notebook\\'s /var/tmp file exists:', exists)
if exists:
    os.remove(probe)   # «cleanup»
''', cleanup=("no container removed it on this host", "en este host no lo borró ningún "
              "contenedor")),
        exercise(3, (
            "Give a container one host folder to write while its root stays read-only: "
            "combine `--read-only` with `--volume`. Check from the notebook that the file "
            "arrived.",
            "Da a un contenedor una carpeta del host donde escribir mientras su raíz es de "
            "solo lectura: combina `--read-only` con `--volume`. Comprueba desde el notebook "
            "que el fichero llegó."),
            (
            "```python\nimport tempfile\nout = tempfile.mkdtemp()\n```\n"
            "```python\n%%container --read-only --volume {out}:/mnt\n"
            "open('/mnt/result.txt', 'w').write('42')\n```\n"
            "```python\nprint(open(f'{out}/result.txt').read())   # 42\n```\n"
            "(`{out}` on the magic's line is expanded from the notebook's variables.) With "
            "`--read-only` nothing can be created in the root, so the container path must "
            "already exist there: `/mnt` does, empty; for `/data` nsmagic says it does not "
            "exist (without `--read-only`, the writable layer creates it).",
            "```python\nimport tempfile\nout = tempfile.mkdtemp()\n```\n"
            "```python\n%%container --read-only --volume {out}:/mnt\n"
            "open('/mnt/result.txt', 'w').write('42')\n```\n"
            "```python\nprint(open(f'{out}/result.txt').read())   # 42\n```\n"
            "(`{out}` en la línea de la magia se expande con las variables del notebook.) "
            "Con `--read-only` no se puede crear nada en la raíz, así que la ruta del "
            "contenedor ya debe existir: `/mnt` existe, vacía; con `/data` nsmagic dice que no "
            "existe (sin `--read-only`, la capa escribible la crea).")),
        check_list('''
- [ ] PID: the cell was pid 2, and the same container had an ordinary pid on the host.
- [ ] UTS: renaming the host inside left the notebook's host name alone.
- [ ] IPC: the host's queues were invisible inside, and visible with `--no-ipc`.
- [ ] NET: a fresh namespace had only `lo`; on the bridge, a client container and the
  notebook both fetched a page from a server container.
- [ ] USER: root inside wrote a file that belongs to another uid outside (one of the
  container's own range as root, your own user otherwise), shared with `--volume`.
- [ ] MOUNT: a read-only view of the host's userland with its secrets masked, a private
  writable layer whose writes vanished, `--read-only` without it, and `--host-root`
  changing a host file.

Next: `03-cgroups.ipynb`, how much a container may use.
''', '''
- [ ] PID: la celda fue el pid 2 y el mismo contenedor tenía un pid normal en el host.
- [ ] UTS: cambiar el nombre dentro no tocó el del notebook.
- [ ] IPC: las colas del host eran invisibles dentro y visibles con `--no-ipc`.
- [ ] NET: un namespace nuevo solo tenía `lo`; en el bridge, un contenedor cliente y el
  notebook obtuvieron una página de un contenedor servidor.
- [ ] USER: root dentro escribió un fichero que pertenece a otro uid fuera (uno del rango
  propio del contenedor como root; si no, tu propio usuario), compartido con `--volume`.
- [ ] MOUNT: una vista de solo lectura del userland del host con sus secretos ocultos, una
  capa escribible privada cuyas escrituras desaparecieron, `--read-only` sin ella y
  `--host-root` cambiando un fichero del host.

Siguiente: `03-cgroups.ipynb`, cuánto puede usar un contenedor.
'''),
    ]


# ---------------------------------------------------------------------------------------------
# 03: cgroups

BURN = '''
import time
wall = time.monotonic()
cpu = time.process_time()
while time.monotonic() - wall < 2:
    pass
share = (time.process_time() - cpu) / (time.monotonic() - wall)
'''


def notebook_03() -> list:
    return header(
        ("3. Control groups: how much a container may use",
         "3. Grupos de control: cuánto puede usar un contenedor"),
        ("limit CPU time, memory and the number of processes with cgroups, and watch each "
         "limit act: throttling, an out-of-memory kill, a fork bomb that stops.",
         "limitar el tiempo de CPU, la memoria y el número de procesos con cgroups, y ver "
         "actuar cada límite: el estrangulamiento de CPU, una muerte por falta de memoria, "
         "una bomba fork que se detiene."),
    ) + [
        Md('''
## Where a process sits
Every process belongs to one control group per hierarchy; `/proc/self/cgroup` says which.
nsmagic creates each container's group *under the notebook's own*, writes the limits into
it, and removes it when the container ends. Inside, the container sees only its own group.

*Documentation:* `man 7 cgroups`, the kernel's `Documentation/admin-guide/cgroup-v2.rst`.
''', '''
## Dónde está un proceso
Cada proceso pertenece a un grupo de control por jerarquía; `/proc/self/cgroup` dice cuál.
nsmagic crea el grupo de cada contenedor *debajo del propio del notebook*, escribe en él los
límites y lo borra cuando el contenedor termina. Dentro, el contenedor solo ve su grupo.

*Documentación:* `man 7 cgroups`, y `Documentation/admin-guide/cgroup-v2.rst` del kernel.
'''),
        Code('''
print(open('/proc/self/cgroup').read())
print('driver on this host:', host.cgroup.get('driver'), '-', host.cgroup.get('version'))
'''),
        Code('''
%%when ISOLATED -- «what»
%%container --memory 128M
import os
print(open('/proc/self/cgroup').read())
print('/sys/fs/cgroup inside:', sorted(os.listdir('/sys/fs/cgroup'))[:8], '...')
''', what=("Inside, /proc/self/cgroup shows '/' (the cgroup namespace hides the path above), "
           "and /sys/fs/cgroup is the container's own group, read-only.",
           "Dentro, /proc/self/cgroup muestra '/' (el namespace de cgroup oculta la ruta de "
           "arriba) y /sys/fs/cgroup es el grupo propio del contenedor, de solo lectura.")),
        Md('''
## A live dashboard
The dashboard below samples every container of this notebook (CPU as % of one core, memory)
and redraws while the next cells run. Where no widget front-end is available, it leaves a
static picture when stopped.
''', '''
## Un panel en directo
El panel de abajo mide todos los contenedores de este notebook (CPU en % de un núcleo,
memoria) y se redibuja mientras corren las celdas siguientes. Donde no hay interfaz de
widgets, deja una imagen fija al pararse.
'''),
        Code('''
import nsmagic.widgets
if hasattr(nsmagic.widgets, 'show_dashboard'):
    dashboard = nsmagic.widgets.show_dashboard(fps=2, window=60, title='03-cgroups')
else:
    dashboard = None
    print('«nodash»')
''', nodash=("This nsmagic has no dashboard: the plot after the CPU experiment shows the "
             "measured figures instead.",
             "Este nsmagic no tiene panel: la gráfica tras el experimento de CPU muestra las "
             "cifras medidas.")),
        Md('''
## CPU quota
`--cpus 0.5` lets the container run for 50 ms of every 100 ms period (`cpu.max` on cgroup
v2, `cpu.cfs_quota_us` on v1); when the budget is spent, the kernel *throttles* it until the
next period. Each run below spins for two seconds and measures the share of one core it got.
Where the host has no writable cgroups, the quota is **not** enforced (nsmagic says so): the
plot shows that too. Where no namespaces are allowed, the same code runs in a plain child
process (`box` below), which is not a container at all.
''', '''
## Cuota de CPU
`--cpus 0.5` deja al contenedor correr 50 ms de cada periodo de 100 ms (`cpu.max` en cgroup
v2, `cpu.cfs_quota_us` en v1); agotado el presupuesto, el kernel lo *estrangula* hasta el
siguiente periodo. Cada ejecución de abajo da vueltas durante dos segundos y mide la parte de
un núcleo que obtuvo. Donde el host no tiene cgroups escribibles, la cuota **no** se aplica
(nsmagic lo dice): la gráfica también lo muestra. Donde no se permiten namespaces, el mismo
código corre en un proceso hijo normal (`box` abajo), que no es un contenedor.
'''),
        Code('''
BURN = """
«burn»
"""
box = {} if ISOLATED else dict(namespaces=(), net='host', userns=False)   # «box»
quotas = [0.25, 0.5, 1.0]
shares = []
for cpus in quotas:
    result = nsmagic.run(BURN, cpus=cpus, outputs=['share'], **box)
    shares.append(result.outputs.get('share', 0.0))
    print(f'--cpus {cpus}: cpu used: {shares[-1]:.2f} of one core ({result.describe()})')
for warning in result.warnings:   # «warnings»
    print('nsmagic:', warning)
'''.replace("«burn»", BURN.strip("\n")),
            warnings=("what nsmagic could not enforce here, if anything",
                      "lo que nsmagic no pudo aplicar aquí, si hay algo"),
            box=("no namespaces here: a plain child process with rlimits",
                 "aquí no hay namespaces: un proceso hijo normal con rlimits")),
        Code('''
import io
from matplotlib.figure import Figure
from IPython.display import Image, display

figure = Figure(figsize=(5, 3))
axes = figure.subplots()
axes.bar([str(q) for q in quotas], shares, color='tab:blue', label='measured')
axes.plot([str(q) for q in quotas], quotas, 'r_', markersize=40, label='quota')
axes.set_xlabel('--cpus'); axes.set_ylabel('share of one core'); axes.legend()
png = io.BytesIO(); figure.savefig(png, format='png', bbox_inches='tight')
display(Image(png.getvalue()))
'''),
        Md('''
## CPU weight
A weight does not cap anything: it only matters when processes compete for the same CPU.
Two containers pinned to CPU 0 with weights 100 and 400 should split it about 1 : 4.
`--bg` returns at once, so both run at the same time; `%container wait` blocks until one
ends, and `%container logs` shows what it printed.
''', '''
## Peso de CPU
Un peso no limita nada: solo cuenta cuando varios procesos compiten por la misma CPU. Dos
contenedores fijados a la CPU 0 con pesos 100 y 400 deberían repartírsela más o menos 1 : 4.
`--bg` vuelve enseguida, así que los dos corren a la vez; `%container wait` espera a que uno
termine y `%container logs` muestra lo que imprimió.
'''),
        Code('''
%%when LIMITS -- «what»
%%container --bg --name light --cpuset 0 --cpu-weight 100
«burn»
print(f'light (weight 100): {share:.2f} of CPU 0')
'''.replace("«burn»", BURN.strip("\n")),
            what=("'light' would spin on CPU 0 with weight 100 (needs writable cgroups).",
                  "'light' daría vueltas en la CPU 0 con peso 100 (requiere cgroups "
                  "escribibles).")),
        Code('''
%%when LIMITS -- «what»
%%container --bg --name heavy --cpuset 0 --cpu-weight 400
«burn»
print(f'heavy (weight 400): {share:.2f} of CPU 0')
'''.replace("«burn»", BURN.strip("\n")),
            what=("'heavy' would spin on CPU 0 beside it with weight 400.",
                  "'heavy' daría vueltas en la CPU 0 a su lado con peso 400.")),
        Code('''
%%when LIMITS -- «what»
%container wait light
%container wait heavy
%container logs light
%container logs heavy
%container rm light
%container rm heavy
''', what=("Where cgroups are writable, light gets about 0.2 and heavy about 0.8 of CPU 0.",
           "Donde los cgroups son escribibles, light obtiene cerca de 0.2 y heavy cerca de 0.8 "
           "de la CPU 0.")),
        Md('''
## Memory limit and the OOM killer
`--memory 64M` caps the group's memory (`memory.max` / `memory.limit_in_bytes`);
`--memory-swap 64M` forbids swapping to escape it. When the group cannot free enough pages,
the kernel's OOM killer kills a process in it, and nsmagic reports it as
*killed: out of memory*. `--no-raise` prints the failure instead of stopping the notebook.
''', '''
## Límite de memoria y el OOM killer
`--memory 64M` limita la memoria del grupo (`memory.max` / `memory.limit_in_bytes`);
`--memory-swap 64M` impide escapar usando swap. Cuando el grupo no puede liberar páginas
suficientes, el OOM killer del kernel mata un proceso del grupo y nsmagic lo informa como
*killed: out of memory*. `--no-raise` imprime el fallo en lugar de detener el notebook.
'''),
        Code('''
%%when ISOLATED -- «what»
%%container --memory 64M --memory-swap 64M --no-raise
chunks = []
for step in range(1, 21):
    chunks.append(bytearray(16 * 1024 * 1024))   # «touch»
    print(f'holding {16 * step} MiB', flush=True)
''', what=("With a 64 MiB limit the cell prints 'holding 16 MiB' ... 'holding 48 MiB' and is "
           "then 'killed: out of memory, limit 64 MiB'.",
           "Con un límite de 64 MiB la celda imprime 'holding 16 MiB' ... 'holding 48 MiB' y "
           "luego 'killed: out of memory, limit 64 MiB'."),
            touch=("bytearray writes zeros: the pages are really used",
                   "bytearray escribe ceros: las páginas se usan de verdad")),
        Md('''
Without a writable cgroup there is no group limit to enforce: nsmagic falls back to a
per-process `RLIMIT_AS` (address space), and the allocation fails with `MemoryError` instead
of an OOM kill. The Python API shows which one this host gives:
''', '''
Sin un cgroup escribible no hay límite de grupo que aplicar: nsmagic recurre a un
`RLIMIT_AS` (espacio de direcciones) por proceso, y la reserva falla con `MemoryError` en
lugar de una muerte por OOM. La API de Python muestra cuál da este host:
'''),
        Code('''
GROW = "chunks = [bytearray(16 * 1024 * 1024) for _ in range(20)]"
result = nsmagic.run(GROW, memory='64M', memory_swap='64M', **box)
print('how it ended:', result.describe())
print('OOM report:', result.oom)
'''),
        Md('''
## A fork bomb meets `--pids`
A fork bomb creates processes until the machine has none left. `--pids 32` caps the number
of processes in the group (`pids.max`): `fork()` then fails with `EAGAIN`
(`BlockingIOError`) and the rest of the machine is unharmed. The loop below stops by itself
at 200 children, in case no limit holds.
''', '''
## Una bomba fork contra `--pids`
Una bomba fork crea procesos hasta que la máquina se queda sin ninguno. `--pids 32` limita el
número de procesos del grupo (`pids.max`): entonces `fork()` falla con `EAGAIN`
(`BlockingIOError`) y el resto de la máquina no sufre. El bucle de abajo para solo a los 200
hijos, por si ningún límite actúa.
'''),
        Code('''
%%when LIMITS -- «what»
%%container --pids 32 --no-raise
import os, time
children = 0
try:
    while children < 200:
        if os.fork() == 0:
            time.sleep(10)   # «sleep»
            os._exit(0)
        children += 1
    print('no limit stopped it: 200 children started')
except OSError as error:
    print(f'fork refused after {children} children: {type(error).__name__}: {error.strerror}')
''', what=("This needs a pids cgroup (without one, the only stand-in is RLIMIT_NPROC, which "
           "counts every process of your user on the whole machine). With one, fork is refused "
           "after about 30 children: BlockingIOError: Resource temporarily unavailable.",
           "Esto necesita un cgroup de pids (sin él, lo único parecido es RLIMIT_NPROC, que "
           "cuenta todos los procesos de tu usuario en toda la máquina). Con él, fork se "
           "rechaza tras unos 30 hijos: BlockingIOError: Resource temporarily unavailable."),
            sleep=("the children die with the container when the cell ends",
                   "los hijos mueren con el contenedor al acabar la celda")),
        Md('''
## Groups of your own: `%cgroup`
`%cgroup` manages groups directly, also for ordinary host programs: create one with limits,
run a command in it, read its usage, remove it.
''', '''
## Grupos propios: `%cgroup`
`%cgroup` gestiona grupos directamente, también para programas normales del host: crear uno
con límites, ejecutar un comando dentro, leer su consumo y borrarlo.
'''),
        Code('''
import shlex, sys
python = shlex.quote(sys.executable)   # «quote»
%cgroup create exp1 --cpus 0.25 --memory 64M
%cgroup run exp1 -- {python} -c "print(sum(i * i for i in range(3 * 10**6)))"
%cgroup show exp1
%cgroup rm exp1
''', quote=("one word on the magic's line, even if the path has a space",
              "una sola palabra en la línea de la magia, aunque la ruta tenga un espacio")),
        Code('''
if dashboard is not None:
    try:
        dashboard.stop()   # «stop»
    except Exception as error:   # «bug»
        print('the dashboard could not draw its last frame:', repr(error))
''', stop=("the last frame stays as a picture", "el último fotograma queda como imagen"),
            bug=("a known nsmagic bug with containers that left no samples",
                 "un fallo conocido de nsmagic con contenedores que no dejaron muestras")),
        exercise(1, (
            "Run the memory cell with `--memory 256M`. How far does it get, and how does it "
            "end?",
            "Ejecuta la celda de memoria con `--memory 256M`. ¿Hasta dónde llega y cómo "
            "termina?"),
            (
            "It holds all 20 chunks (320 MiB)? No: the limit is 256 MiB, so it is killed after "
            "about 240 MiB, with `killed: out of memory, limit 256 MiB`. Remove `--memory` "
            "altogether and it finishes normally.",
            "¿Guarda los 20 bloques (320 MiB)? No: el límite es 256 MiB, así que muere tras "
            "unos 240 MiB con `killed: out of memory, limit 256 MiB`. Sin `--memory` termina "
            "con normalidad.")),
        exercise(2, (
            "Put two containers in the same group: `%cgroup create pair --pids 20`, then run "
            "two `%%container --cgroup pair --bg` fork loops. How many children does each get?",
            "Mete dos contenedores en el mismo grupo: `%cgroup create pair --pids 20` y luego "
            "dos bucles fork con `%%container --cgroup pair --bg`. ¿Cuántos hijos consigue "
            "cada uno?"),
            (
            "Together they stay under 20: the limit belongs to the group, not to each "
            "container, so whichever forks faster takes more of the budget.",
            "Entre los dos se quedan por debajo de 20: el límite es del grupo, no de cada "
            "contenedor, así que el que hace fork más deprisa se lleva más presupuesto.")),
        check_list('''
- [ ] The measured CPU share followed `--cpus` (or, without writable cgroups, you saw that it
  did not and why).
- [ ] With equal competition on one CPU, the heavier weight got more of it.
- [ ] A cell went over its memory limit and was `killed: out of memory`, and the notebook
  carried on.
- [ ] A fork loop hit `--pids` and stopped with `BlockingIOError`.

Next: `04-containers-vs-vms.ipynb`.
''', '''
- [ ] La parte de CPU medida siguió a `--cpus` (o, sin cgroups escribibles, viste que no y por
  qué).
- [ ] Compitiendo por una CPU, el peso mayor obtuvo más.
- [ ] Una celda superó su límite de memoria, acabó `killed: out of memory` y el notebook
  siguió.
- [ ] Un bucle de fork chocó con `--pids` y se detuvo con `BlockingIOError`.

Siguiente: `04-containers-vs-vms.ipynb`.
'''),
    ]


# ---------------------------------------------------------------------------------------------
# 04: containers vs VMs

def notebook_04() -> list:
    return header(
        ("4. Containers and virtual machines", "4. Contenedores y máquinas virtuales"),
        ("measure a real virtual machine and a container on this same host: how long each "
         "takes to start, how much memory each costs, and how many would fit.",
         "medir una máquina virtual real y un contenedor en este mismo host: cuánto tarda en "
         "arrancar cada uno, cuánta memoria cuesta y cuántos cabrían."),
    ) + [
        Md('''
## Two ways to isolate
A container shares the host's kernel: isolation is the kernel showing a process a different
world. A virtual machine boots a kernel of its own on emulated (or hardware-assisted)
hardware: `qemu` runs it, with KVM when the CPU allows it and emulation (TCG, much slower)
otherwise. `%vm_baseline` boots a minimal Linux guest, waits until its init says *ready*,
measures qemu from the outside in its own cgroup, and starts containers in the same run for
comparison. Without qemu (as on Binder) it shows figures published by others, labelled
*published, not measured*.
''', '''
## Dos maneras de aislar
Un contenedor comparte el kernel del host: el aislamiento consiste en que el kernel le
muestra a un proceso otro mundo. Una máquina virtual arranca su propio kernel sobre hardware
emulado (o asistido por hardware): lo ejecuta `qemu`, con KVM cuando la CPU lo permite y con
emulación (TCG, mucho más lenta) si no. `%vm_baseline` arranca un Linux mínimo como invitado,
espera a que su init diga *ready*, mide qemu desde fuera en su propio cgroup y arranca
contenedores en la misma ejecución para comparar. Sin qemu (como en Binder) muestra cifras
publicadas por otros, etiquetadas *published, not measured*.
'''),
        Code('''
baseline = %vm_baseline --runs 1 -o
'''),
        Md('''
## Side by side
The same figures, picked out of the result object: start time and memory.
''', '''
## Lado a lado
Las mismas cifras, sacadas del objeto resultado: tiempo de arranque y memoria.
'''),
        Code('''
def show(value, unit):
    if value is None:
        return 'n/a'
    if unit == 's':
        return f'{value * 1000:.1f} ms' if value < 1 else f'{value:.2f} s'
    if unit == 'bytes':
        return f'{value / 2**20:.1f} MiB'
    return f'{value:,}'

if baseline.measured:
    print(f'VM: {baseline.label}')
    wanted = ('start: launch -> ready', 'host memory (PSS)', 'cgroup memory (memory.current)')
    for row in baseline.rows:
        if row.figure in wanted:
            ratio = f'{row.vm / row.container:.0f}x' if row.vm and row.container else ''
            print(f'{row.figure:32} VM {show(row.vm, row.unit):>10}   '
                  f'container {show(row.container, row.unit):>10}   {ratio}')
    if getattr(baseline, 'disk_sentence', None):   # the course's "small images", measured
        print(baseline.disk_sentence)
else:
    print('published, not measured here:', baseline.why_not_measured)
'''),
        Md('''
## Density
How many would fit? Dividing the machine's memory by what one idle instance costs gives an
upper bound (CPU, pids and page sharing limit it further).
''', '''
## Densidad
¿Cuántos cabrían? Dividir la memoria de la máquina entre lo que cuesta una instancia en reposo
da una cota superior (la CPU, los pids y el compartir páginas la reducen más).
'''),
        Code('''
for row in baseline.density:
    vm, container = show(row.vm, row.unit), show(row.container, row.unit)
    print(f'{row.figure:42} VM {vm:>8}   container {container:>8}')
if not baseline.density:
    print('«nodensity»')
''', nodensity=("No VM was measured here, so there is no density estimate: see the published "
                "figures above.",
                "Aquí no se midió ninguna VM, así que no hay estimación de densidad: mira las "
                "cifras publicadas arriba.")),
        Md('''
Density, measured: start ten idle containers and look at what each costs.
''', '''
Densidad, medida: arrancamos diez contenedores en reposo y miramos cuánto cuesta cada uno.
'''),
        Code('''
%%when ISOLATED -- «what»
import time
began = time.perf_counter()
for number in range(10):
    get_ipython().run_line_magic('container', f'start idle{number} --memory 64M')
print(f'10 containers started in {time.perf_counter() - began:.2f} s')
listing = %container ls
display(listing)
for number in range(10):
    get_ipython().run_line_magic('container', f'rm -f idle{number}')
''', what=("Ten idle containers would start in well under a second, a few MiB each "
           "(%container ls shows their memory).",
           "Diez contenedores en reposo arrancarían en mucho menos de un segundo, unos pocos "
           "MiB cada uno (%container ls muestra su memoria).")),
        exercise(1, (
            "A Binder session gets 2 GB of memory. Using `baseline.rows`, how many of this "
            "VM and how many idle containers would fit in it?",
            "Una sesión de Binder tiene 2 GB de memoria. Con `baseline.rows`, ¿cuántas de estas "
            "VM y cuántos contenedores en reposo cabrían?"),
            (
            "```python\nbudget = 2 * 10**9\nrow = baseline.row('host memory (PSS)')\n"
            "print(budget // row.vm, 'VMs', budget // row.container, 'containers')\n```\n"
            "With the figures of the development host (about 200 MiB per emulated VM, 15 MiB "
            "per container) that is roughly 9 VMs against 120 containers.",
            "```python\nbudget = 2 * 10**9\nrow = baseline.row('host memory (PSS)')\n"
            "print(budget // row.vm, 'VMs', budget // row.container, 'containers')\n```\n"
            "Con las cifras del host de desarrollo (unos 200 MiB por VM emulada, 15 MiB por "
            "contenedor) salen unas 9 VM frente a 120 contenedores.")),
        exercise(2, (
            "Run `%vm_baseline --runs 1 --workload cpu` and compare the CPU time of the VM and "
            "of the container doing the same loop. Where does the difference come from?",
            "Ejecuta `%vm_baseline --runs 1 --workload cpu` y compara el tiempo de CPU de la "
            "VM y del contenedor haciendo el mismo bucle. ¿De dónde sale la diferencia?"),
            (
            "Under TCG every guest instruction is translated by qemu, so the VM needs many "
            "times the CPU of the container for the same work; under KVM the guest runs "
            "natively and the gap mostly closes. Start-up and memory still differ: a VM boots "
            "a kernel and reserves its RAM, a container is a process.",
            "Con TCG qemu traduce cada instrucción del invitado, así que la VM necesita varias "
            "veces la CPU del contenedor para el mismo trabajo; con KVM el invitado corre "
            "nativo y la diferencia casi desaparece. El arranque y la memoria siguen siendo "
            "distintos: una VM arranca un kernel y reserva su RAM; un contenedor es un "
            "proceso.")),
        check_list('''
- [ ] You know whether this host's VM ran with KVM or emulated (TCG), or why none ran.
- [ ] You can say how many times longer a VM takes to start than a container here, and how
  many times more memory it holds.
- [ ] You can explain why containers start in milliseconds: no kernel boots, the process only
  gets namespaces and a cgroup.
''', '''
- [ ] Sabes si la VM de este host corrió con KVM o emulada (TCG), o por qué no corrió.
- [ ] Sabes decir cuántas veces más tarda en arrancar una VM que un contenedor aquí y cuántas
  veces más memoria ocupa.
- [ ] Sabes explicar por qué un contenedor arranca en milisegundos: no arranca ningún kernel;
  el proceso solo recibe namespaces y un cgroup.
'''),
    ]


NOTEBOOKS = {
    "01-what-is-a-container.ipynb": notebook_01,
    "02-namespaces.ipynb": notebook_02,
    "03-cgroups.ipynb": notebook_03,
    "04-containers-vs-vms.ipynb": notebook_04,
}


def build(lang: str, name: str) -> nbformat.NotebookNode:
    cells = [cell.render(lang) for cell in NOTEBOOKS[name]()]
    for number, cell in enumerate(cells):
        cell.id = f"cell-{number:02d}"  # stable ids: rebuilding changes nothing that did not
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": KERNELSPEC, "language_info": {"name": "python"},
    })
    notebook.metadata["language"] = lang
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    for lang, folder in LANGUAGES.items():
        folder.mkdir(exist_ok=True)
        for name in NOTEBOOKS:
            nbformat.write(build(lang, name), folder / name)
            print(f"wrote {(folder / name).relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
