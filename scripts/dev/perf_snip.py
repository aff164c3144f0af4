import torch, triton, rope_triton
from triton.testing import do_bench
B,S,Hq,Hk,D=4,4096,32,8,128
for dt in (torch.bfloat16,):
    sets=[(torch.randn(B,S,Hq,D,device="cuda",dtype=dt),torch.randn(B,S,Hk,D,device="cuda",dtype=dt)) for _ in range(3)]
    ang=torch.arange(S,device="cuda",dtype=torch.float64)[:,None]*10000**(-torch.arange(64,device="cuda")/64)
    cos,sin=ang.cos().float(),ang.sin().float()
    n=sets[0][0].numel()+sets[0][1].numel()
    src=torch.empty(n,device="cuda",dtype=dt); dst=torch.empty_like(src)
    i=[0]
    def f():
        i[0]=(i[0]+1)%3; q,k=sets[i[0]]; rope_triton.apply_rotary(q,k,cos,sin)
    def fi():
        i[0]=(i[0]+1)%3; q,k=sets[i[0]]; rope_triton.apply_rotary(q,k,cos,sin,inplace=True)
    for rep in range(3):
        tc=do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
        tf=do_bench(f, warmup=50, rep=300, return_mode="median")
        ti=do_bench(fi, warmup=50, rep=300, return_mode="median")
        print(f"copy {tc*1e3:.1f}us  out {tf*1e3:.1f}us ({tc/tf*100:.1f}%)  inplace {ti*1e3:.1f}us ({tc/ti*100:.1f}%)")
